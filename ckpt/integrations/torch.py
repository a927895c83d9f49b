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

Tied tensors (two leaves sharing storage) are stored once each and come back as
separate tensors; restoring into a module ties them again, because
``load_state_dict`` copies into the module's own parameters.

Resuming a DataLoader exactly
-----------------------------
A sampler cannot tell what the training loop has consumed: a ``DataLoader`` with
workers draws indices several batches ahead. :class:`ResumableSampler` therefore
counts batches when :meth:`ResumableSampler.batches` hands them to the loop::

    order = ckpt.DataOrder(len(dataset), batch_size=32, seed=0)
    sampler = ResumableSampler(order)
    loader = DataLoader(dataset, batch_size=32, sampler=sampler,
                        generator=torch.Generator())
    state = {"model": model, "optimizer": opt, "sampler": sampler, "rng": ckpt.RNGState()}
    with ckpt.TrainingLoop(manager, state, total_steps=n) as loop:
        batches = sampler.batches(loader)      # after the loop restored the sampler
        for step in loop:
            inputs, targets = next(batches)

If you shuffle with a ``torch.Generator`` of your own (``RandomSampler(generator=g)``,
``torch.randperm(n, generator=g)``), put ``ckpt.RNGState(g)`` in the state: it is
restored in place. Note that ``RandomSampler`` draws a whole epoch's permutation
when the epoch starts, so it cannot resume mid-epoch; that is what this sampler is for.
Randomness inside dataset workers (augmentation) is reproducible across a resume
only when it is derived from the sample index and epoch, not from worker seeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ckpt.errors import UnsupportedTypeError
from ckpt.sampler import DataOrder
from ckpt.template import describe

__all__ = [
    "KIND",
    "is_tensor",
    "encode_tensor",
    "decode_tensor",
    "mismatches",
    "copy_into",
    "ResumableSampler",
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


# ----------------------------------------------------------------- sampler


class ResumableSampler(Sampler[int]):
    """A ``DataLoader`` sampler over a :class:`~ckpt.DataOrder` that resumes mid-epoch.

    Each ``iter()`` yields the indices of the current epoch not consumed yet, or
    starts the next epoch when this one is used up. Consumption is counted per
    batch handed to the training loop by :meth:`batches` (or :meth:`consume`),
    never per index the loader prefetched, so ``state_dict()`` (the order's
    ``{seed, epoch, position}``) is exactly where an uninterrupted run would be.
    """

    def __init__(self, order: DataOrder) -> None:
        super().__init__()
        self.order = order

    def _epoch_end(self) -> int:
        return len(self.order)  # with drop_last, the last full batch's end

    def __iter__(self) -> Iterator[int]:
        if self.order.position >= self._epoch_end():
            state = self.order.state_dict()
            self.order.load_state_dict({**state, "epoch": state["epoch"] + 1, "position": 0})
        rest = self.order.order()[self.order.position:self._epoch_end()]
        return iter(rest.tolist())

    def __len__(self) -> int:
        """How many indices the next ``iter()`` yields."""
        remaining = self._epoch_end() - self.order.position
        return remaining if remaining > 0 else self._epoch_end()

    def consume(self, batches: int = 1) -> None:
        """Count ``batches`` more batches as used by the training loop."""
        stop = self.order.position + batches * self.order.batch_size
        self.order.position = min(stop, self._epoch_end())

    def batches(self, loader: DataLoader) -> Iterator[Any]:
        """Yield ``loader``'s batches epoch after epoch, for ever, counting each one.

        A batch counts as consumed when it is handed out, so a checkpoint saved
        after the step that used it resumes with the next one.
        """
        self._check_loader(loader)
        while True:
            for batch in loader:
                self.consume()
                yield batch

    def _check_loader(self, loader: DataLoader) -> None:
        order = self.order
        if loader.sampler is not self:
            raise ValueError("the DataLoader must use this sampler: DataLoader(..., sampler=it)")
        if loader.batch_size != order.batch_size or loader.drop_last != order.drop_last:
            raise ValueError(
                f"DataLoader(batch_size={loader.batch_size}, drop_last={loader.drop_last}) "
                f"must match its DataOrder(batch_size={order.batch_size}, "
                f"drop_last={order.drop_last}): batches are counted in the order's size")
        if loader.generator is None:
            raise ValueError(
                "pass generator=torch.Generator() to the DataLoader: without one, every "
                "iter(loader) draws a seed from torch's global RNG, and a resumed run "
                "starts one more iteration than an uninterrupted run, which would shift "
                "dropout and every other global random draw after the resume")

    def state_dict(self) -> dict[str, Any]:
        """The order's ``{"seed", "epoch", "position"}``, position = samples consumed."""
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        self.order.load_state_dict(state)
