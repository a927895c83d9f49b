"""PyTorch tensors as ckpt leaves, and a DataLoader sampler that resumes mid-epoch.

Tensors
-------
A tensor is stored as a numpy array of its values (leaf kind ``"torch"``) with its
torch dtype name in the leaf's ``extra``. dtypes numpy lacks (bfloat16, the float8
and float4 formats, complex32, the bit and sub-byte shell types) are stored as the
unsigned integer of the same width, so their bits come back exactly. Tensors on
other devices are copied to the CPU; views are stored as their values; ``requires_grad``
and ``nn.Parameter`` are recorded and restored. Restores give CPU tensors unless a
``device`` is given; restoring *into* tensors copies across devices.

Refused, with :class:`~ckpt.errors.UnsupportedTypeError` naming the key path:
sparse, quantized, nested and meta tensors, and tensor subclasses other than
``nn.Parameter`` (ckpt could not give them back as the same type).

Tensors that share storage (tied weights such as GPT-2's embedding and ``lm_head``,
views of one buffer) are stored once: one leaf holds the bytes, the others are
*aliases* recording their offset and strides in it. A plain restore gives them back
sharing storage again; restoring into a module keeps the module's own ties.

Modules are stored under canonical parameter names: the state of
``torch.compile(model)`` (keys ``_orig_mod.*``) and of a DDP or DataParallel wrapper
(``module.*``) is the wrapped model's, so a checkpoint restores into the plain model
or any wrapper of it, either way.

Resuming a DataLoader exactly (mid-epoch, augmentation in workers included): see
:mod:`ckpt.integrations.torch_data`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ckpt.errors import UnsupportedTypeError
from ckpt.template import LeafSpec, describe

__all__ = [
    "KIND",
    "is_tensor",
    "encode_tensor",
    "decode_tensor",
    "mismatches",
    "copy_into",
    "ResumableSampler",
    "SeededDataset",
    "sample_generator",
]

KIND = "torch"

# torch dtypes numpy holds natively; every other one is stored as an unsigned int
_NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {
    torch.bool: np.dtype(np.bool_),
    torch.uint8: np.dtype(np.uint8),
    torch.uint16: np.dtype(np.uint16),
    torch.uint32: np.dtype(np.uint32),
    torch.uint64: np.dtype(np.uint64),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
}
_UINT_OF_WIDTH = {1: torch.uint8, 2: torch.uint16, 4: torch.uint32, 8: torch.uint64}
# quantized dtypes carry a scale and zero point outside their bits: not a plain array
_QUANTIZED_NAMES = ("qint8", "quint8", "qint32", "quint4x2", "quint2x4")
_SPARSE_HINT = "ckpt stores dense tensors; store .to_dense(), or its indices() and values()"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _storable_dtypes() -> dict[str, torch.dtype]:
    """Every dtype this torch has that ckpt can store, by name (an allowlist for loads)."""
    quantized = {getattr(torch, name, None) for name in _QUANTIZED_NAMES}
    found = {}
    for value in vars(torch).values():
        if (isinstance(value, torch.dtype) and value not in quantized
                and (value in _NUMPY_DTYPES or value.itemsize in _UINT_OF_WIDTH)):
            found[_dtype_name(value)] = value
    return found


_DTYPES_BY_NAME = _storable_dtypes()


def _storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the bits are stored as: the dtype itself, or the uint of its width."""
    return dtype if dtype in _NUMPY_DTYPES else _UINT_OF_WIDTH[dtype.itemsize]


# ------------------------------------------------------------------ leaves


def is_tensor(value: Any) -> bool:
    """True for ``torch.Tensor`` instances (subclasses included)."""
    return isinstance(value, torch.Tensor)


def encode_tensor(tensor: torch.Tensor, key: str) -> tuple[str, np.ndarray, dict]:
    """Encode ``tensor`` as ``("torch", C-contiguous CPU array, {"dtype": name, ...})``.

    The array shares the tensor's memory when it is a contiguous CPU tensor of a
    numpy dtype: saving does not copy the state. Raises
    :class:`UnsupportedTypeError` naming ``key`` for tensors ckpt cannot represent.
    """
    _refuse_unrepresentable(tensor, key)
    data = tensor.detach()
    # lazy conjugate/negative views would otherwise be stored without their sign
    if data.is_conj():
        data = data.resolve_conj()
    if data.is_neg():
        data = data.resolve_neg()
    storage = _storage_dtype(data.dtype)
    if storage is not data.dtype:
        # view before any copy: shell dtypes (uint4, int3, ...) have no copy kernel
        data = data.view(storage)
    array = data.cpu().contiguous().numpy()
    extra: dict[str, Any] = {"dtype": _dtype_name(tensor.dtype)}
    if tensor.requires_grad:
        extra["requires_grad"] = True
    if type(tensor) is torch.nn.Parameter:
        extra["parameter"] = True
    return KIND, array, extra


def _refuse_unrepresentable(tensor: torch.Tensor, key: str) -> None:
    problem = _why_unrepresentable(tensor)
    if problem is not None:
        raise UnsupportedTypeError(key, *problem)


def _why_unrepresentable(tensor: torch.Tensor) -> tuple[str, str] | None:
    """``(type name, what to do instead)`` for a tensor ckpt cannot store, else None."""
    if isinstance(tensor, torch.nn.parameter.UninitializedTensorMixin):
        return ("torch.nn.UninitializedParameter",
                "a lazy module's parameter has no shape yet: run one forward pass first")
    if tensor.is_nested:
        return ("torch nested tensor", "store its components (tensor.unbind()) instead")
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        cls = type(tensor)
        return (f"{cls.__module__}.{cls.__qualname__}",
                "tensor subclasses would not come back as the same type; store "
                "tensor.as_subclass(torch.Tensor) or the subclass's inner tensors")
    if tensor.layout != torch.strided:
        return (f"torch sparse tensor ({tensor.layout})", _SPARSE_HINT)
    if tensor.is_quantized:
        return (f"torch quantized tensor ({tensor.dtype})",
                "store tensor.dequantize(), or int_repr() with its scale and zero point")
    if tensor.is_meta:
        return ("torch tensor on the meta device", "it has no data to store")
    if _dtype_name(tensor.dtype) not in _DTYPES_BY_NAME:
        return (f"torch tensor of dtype {tensor.dtype}", "this dtype has no fixed byte width")
    return None


def decode_tensor(array: np.ndarray, extra: dict, device: Any = None) -> torch.Tensor:
    """Rebuild the tensor :func:`encode_tensor` stored: same dtype, shape and bits.

    Shares memory with ``array`` when it can. ``device`` (a ``str`` or
    ``torch.device``) places the tensor; None keeps it on the CPU.
    """
    name = extra.get("dtype")
    dtype = _DTYPES_BY_NAME.get(name) if name is not None else None
    if name is not None and dtype is None:
        raise ValueError(f"unknown torch dtype {name!r} in checkpoint "
                         "(written by a newer torch?)")
    array = _native_writable(array)
    if dtype is not None:
        expected = _NUMPY_DTYPES[_storage_dtype(dtype)]
        if array.dtype != expected:
            raise ValueError(f"torch {name} leaf is stored as {array.dtype}, "
                             f"expected {expected}")
    tensor = torch.from_numpy(array)
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.view(dtype)
    if device is not None:
        tensor = tensor.to(device)
    requires_grad = bool(extra.get("requires_grad", False))
    if extra.get("parameter"):
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(True) if requires_grad else tensor


def _native_writable(array: np.ndarray) -> np.ndarray:
    # torch.from_numpy takes neither byte-swapped nor read-only arrays
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array if array.flags.writeable else array.copy()


# --------------------------------------------------------- restore into


def mismatches(template: torch.Tensor, restored: Any) -> list[tuple[str, str, str]]:
    """Why ``restored`` cannot fill ``template``: ``[(kind, expected, found), ...]``.

    Empty when it fits; a shape and a dtype difference are both reported.
    """
    if not is_tensor(restored):
        return [("type", describe(template), describe(restored))]
    if template.is_meta:
        return [("device", "a tensor with storage (the template is on the meta device: "
                 "materialize it first, e.g. module.to_empty(device=...))",
                 str(restored.device))]
    problems = []
    if template.shape != restored.shape:
        problems.append(("shape", str(tuple(template.shape)), str(tuple(restored.shape))))
    if template.dtype != restored.dtype:
        problems.append(("dtype", str(template.dtype), str(restored.dtype)))
    return problems


def copy_into(template: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """Copy ``restored`` into ``template`` in place (across devices); return the template.

    Bits are copied through a same-width integer view, so no dtype conversion can
    touch them (and shell dtypes, which have no copy kernel, work too).
    """
    if template.is_inference() and not torch.is_inference_mode_enabled():
        # inference tensors refuse in-place updates outside inference mode
        return restored.to(template.device)
    storage = _storage_dtype(template.dtype)
    with torch.no_grad():
        template.view(storage).copy_(restored.view(storage))
    return template


# ------------------------------------------------- torch.Size, dtype, device

_VALUE_KINDS = {torch.Size: "torch_size", torch.dtype: "torch_dtype",
                torch.device: "torch_device"}


def encode_value(value: Any) -> tuple[str, np.ndarray, dict]:
    """Encode a ``torch.Size`` (its ints), ``torch.dtype`` or ``torch.device`` (its name)."""
    kind = _VALUE_KINDS[type(value)]
    if kind == "torch_size":
        return kind, np.asarray(list(value), dtype="<i8").reshape(-1), {}
    text = _dtype_name(value) if kind == "torch_dtype" else str(value)
    return kind, np.frombuffer(text.encode("ascii"), dtype=np.uint8), {}


def decode_value(kind: str, array: np.ndarray) -> Any:
    """Rebuild what :func:`encode_value` stored; unknown names raise ``ValueError``."""
    if kind == "torch_size":
        return torch.Size(int(d) for d in array.reshape(-1))
    text = array.tobytes().decode("ascii")
    if kind == "torch_dtype":
        dtype = getattr(torch, text, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown torch dtype {text[:50]!r}")
        return dtype
    try:
        return torch.device(text)
    except RuntimeError as error:
        raise ValueError(f"invalid torch device {text[:50]!r}") from error


def value_type(kind: str) -> type:
    """The Python type a torch value kind comes back as."""
    return {v: k for k, v in _VALUE_KINDS.items()}[kind]


# ------------------------------------------------------------ shared storage


def find_aliases(leaves: list[tuple[Any, Any]]) -> dict[int, tuple[int, int, list[int]]]:
    """``{leaf number: (base leaf number, byte offset, byte strides)}`` for tensors
    whose bytes lie inside another contiguous leaf tensor's (same storage)."""
    groups: dict[tuple, list[int]] = {}
    for number, (_, value) in enumerate(leaves):
        if _aliasable(value):
            key = (str(value.device), value.untyped_storage().data_ptr())
            groups.setdefault(key, []).append(number)
    aliases: dict[int, tuple[int, int, list[int]]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        # the largest contiguous tensors become the stored bases
        order = sorted(members, key=lambda n: (not leaves[n][1].is_contiguous(),
                                               -leaves[n][1].nbytes, n))
        bases: list[int] = []
        for number in order:
            tensor = leaves[number][1]
            for base in bases:
                placed = _inside(tensor, leaves[base][1])
                if placed is not None:
                    aliases[number] = (base, *placed)
                    break
            else:
                if tensor.is_contiguous():
                    bases.append(number)
    return aliases


def _aliasable(value: Any) -> bool:
    return (isinstance(value, torch.Tensor) and _why_unrepresentable(value) is None
            and value.numel() > 0 and not value.is_conj() and not value.is_neg())


def _inside(tensor: torch.Tensor, base: torch.Tensor) -> tuple[int, list[int]] | None:
    """Where ``tensor``'s elements lie in ``base``'s bytes, or None if not all inside."""
    width = tensor.element_size()
    start = tensor.storage_offset() * width
    strides = [s * width for s in tensor.stride()]
    extent = sum((d - 1) * s for d, s in zip(tensor.shape, strides)) + width
    base_start = base.storage_offset() * base.element_size()
    if min(strides, default=0) < 0 or start < base_start:
        return None
    if start + extent > base_start + base.nbytes:
        return None
    return start - base_start, strides


def encode_alias(tensor: torch.Tensor, key: str,
                 alias: tuple[int, int, list[int]]) -> tuple[str, np.ndarray, dict]:
    """Encode a tensor stored as a view of another leaf: no bytes of its own."""
    _refuse_unrepresentable(tensor, key)
    base, offset, strides = alias
    storage = _NUMPY_DTYPES[_storage_dtype(tensor.dtype)]
    # a zero-strided placeholder: the right dtype and shape, and no memory
    placeholder = np.broadcast_to(np.zeros((), dtype=storage), tuple(tensor.shape))
    extra: dict[str, Any] = {"dtype": _dtype_name(tensor.dtype),
                             "alias": {"of": base, "offset": offset, "strides": strides}}
    if tensor.requires_grad:
        extra["requires_grad"] = True
    if type(tensor) is torch.nn.Parameter:
        extra["parameter"] = True
    return KIND, placeholder, extra


def decode_alias(base: torch.Tensor, entry: dict) -> torch.Tensor:
    """The alias leaf ``entry`` as a view sharing ``base``'s storage."""
    extra, alias = entry.get("extra") or {}, entry["alias"]
    dtype = _DTYPES_BY_NAME.get(extra.get("dtype"))
    if dtype is None:
        raise ValueError(f"unknown torch dtype {extra.get('dtype')!r} in checkpoint")
    width = dtype.itemsize
    start = base.storage_offset() * base.element_size() + alias["offset"]
    if start % width or any(s % width for s in alias["strides"]):
        raise ValueError("alias offset or strides are not multiples of its element size")
    view = torch.empty(0, dtype=dtype, device=base.device)
    view.set_(base.detach().untyped_storage(), start // width, tuple(entry["shape"]),
              tuple(s // width for s in alias["strides"]))
    requires_grad = bool(extra.get("requires_grad", False))
    if extra.get("parameter"):
        return torch.nn.Parameter(view, requires_grad=requires_grad)
    return view.requires_grad_(True) if requires_grad else view


# ------------------------------------------------------------------ modules

_COMPILED = "_orig_mod"  # torch.compile's OptimizedModule keeps the model here
_WRAPPER_PREFIX = "module."


def is_module(value: Any) -> bool:
    """True for ``nn.Module`` instances (wrappers included)."""
    return isinstance(value, torch.nn.Module)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``torch.compile``, DDP and DataParallel wrappers."""
    while True:
        if type(module).__name__ == "OptimizedModule" and hasattr(module, _COMPILED):
            module = getattr(module, _COMPILED)
        elif isinstance(module, (torch.nn.DataParallel,
                                 torch.nn.parallel.DistributedDataParallel)):
            module = module.module
        else:
            return module


def canonical_key(key: str) -> str:
    """A parameter name without the ``_orig_mod`` parts compiled submodules add."""
    if _COMPILED not in key:
        return key
    return ".".join(part for part in key.split(".") if part != _COMPILED)


def module_state_dict(module: torch.nn.Module) -> dict[str, Any]:
    """The module's state dict under canonical names (what a checkpoint stores)."""
    state = unwrap(module).state_dict()
    if not any(_COMPILED in key for key in state):
        return state
    return type(state)((canonical_key(k), v) for k, v in state.items())


def canonical_restored(restored: Any, template_state: dict) -> Any:
    """Checkpoint keys made canonical, for files saved under wrapper names."""
    keys = list(restored)
    if not all(isinstance(k, str) for k in keys):
        return restored
    renamed = [canonical_key(k) for k in keys]
    if (renamed and all(k.startswith(_WRAPPER_PREFIX) for k in renamed)
            and not any(k.startswith(_WRAPPER_PREFIX) for k in template_state)):
        renamed = [k[len(_WRAPPER_PREFIX):] for k in renamed]
    if renamed == keys or len(set(renamed)) != len(renamed):
        return restored
    return type(restored)(zip(renamed, restored.values()))


def load_module_state(module: torch.nn.Module, state: dict[str, Any]) -> None:
    """``load_state_dict`` with canonical names mapped back to the module's own."""
    inner = unwrap(module)
    actual = {canonical_key(k): k for k in inner.state_dict(keep_vars=True)}
    inner.load_state_dict(type(state)((actual.get(k, k), v) for k, v in state.items()))


def prefix_hint(where: str, mismatches: list[tuple[str, str, str, str]]) -> str:
    """Say so when every missing key differs from an unexpected one by one prefix."""
    missing = [m[0] for m in mismatches if m[1] == "missing"]
    unexpected = [m[0] for m in mismatches if m[1] == "unexpected"]
    if not missing or len(missing) != len(unexpected):
        return ""
    base = f"{where}/" if where != "<root>" else ""
    names_missing = sorted(k[len(base):].strip("'") for k in missing)
    names_unexpected = sorted(k[len(base):].strip("'") for k in unexpected)
    for longer, shorter, side in ((names_unexpected, names_missing, "checkpoint"),
                                  (names_missing, names_unexpected, "template")):
        prefix = _common_prefix(longer, shorter)
        if prefix:
            return (f"every key at {where} differs by the prefix {prefix!r}, which the "
                    f"{side} has: the state was saved from (or is restored into) a "
                    "wrapped model; save and restore the model itself, or strip the "
                    "prefix from the keys")
    return ""


def _common_prefix(longer: list[str], shorter: list[str]) -> str:
    first, other = longer[0], shorter[0]
    if not first.endswith(other) or first == other:
        return ""
    prefix = first[:len(first) - len(other)]
    if all(a == prefix + b for a, b in zip(longer, sorted(shorter))):
        return prefix
    return ""


def structure_mismatches(obj: Any, state: Any, restored: Any) -> list[tuple[str, str, str]]:
    """Differences an optimizer's ``load_state_dict`` would refuse after touching others:
    the number of parameter groups and of parameters in each."""
    if not isinstance(obj, torch.optim.Optimizer):
        return []
    saved, own = restored.get("param_groups"), state.get("param_groups")
    if not isinstance(saved, (list, tuple)) or not isinstance(own, list):
        return [("missing", "param_groups", "nothing in the checkpoint")]
    if len(saved) != len(own):
        return [("param_groups", f"{len(own)} parameter groups", f"{len(saved)}")]
    problems = []
    for number, (group, theirs) in enumerate(zip(own, saved)):
        params = theirs.get("params") if isinstance(theirs, dict) else None
        if not isinstance(params, (list, tuple)) or len(params) != len(group["params"]):
            found = len(params) if isinstance(params, (list, tuple)) else describe(params)
            problems.append((f"param_groups/{number}/params",
                             f"{len(group['params'])} parameters", str(found)))
    return problems


# --------------------------------------------------------- restore planning


def spec_mismatches(template: torch.Tensor, spec: LeafSpec) -> list[tuple[str, str, str]]:
    """Why the checkpoint leaf ``spec`` cannot fill ``template`` (empty when it can)."""
    if spec.kind != KIND:
        return [("type", describe(template), describe(spec))]
    if template.is_meta:
        return [("device", "a tensor with storage (the template is on the meta device: "
                 "materialize it first, e.g. module.to_empty(device=...))", "a stored tensor")]
    problems = []
    if tuple(template.shape) != spec.shape:  # a shape and a dtype difference: both
        problems.append(("shape", str(tuple(template.shape)), str(spec.shape)))
    if _dtype_name(template.dtype) != spec.extra.get("dtype"):
        problems.append(("dtype", str(template.dtype), f"torch.{spec.extra.get('dtype')}"))
    return problems


def destination(template: torch.Tensor, spec: LeafSpec) -> np.ndarray | None:
    """The template's own memory as an array the leaf can be read into, or None."""
    if (template.device.type != "cpu" or not template.is_contiguous() or template.is_conj()
            or template.is_neg() or template.numel() == 0 or spec.alias is not None
            or (template.is_inference() and not torch.is_inference_mode_enabled())):
        return None
    array = template.detach().view(_storage_dtype(template.dtype)).numpy()
    return array if array.dtype.str == spec.dtype.str else None


# the DataLoader kit lives in its own module; these names stay importable from here
from ckpt.integrations.torch_data import (  # noqa: E402
    ResumableSampler,
    SeededDataset,
    sample_generator,
)
