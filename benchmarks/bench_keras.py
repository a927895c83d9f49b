"""Save and restore a Keras model with ckpt vs ``model.save_weights``/``load_weights``,
and a JAX pytree with ckpt vs Orbax (when installed), in one run.

    KERAS_BACKEND=torch python benchmarks/bench_keras.py [--params 25] [--runs 5]

Each variant runs ``--runs`` times in rotating order (so no variant always runs
first or on a cold cache); the table gives the median and the ratio against the
baseline measured in the same run (time / baseline, lower is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _timing import fsync_path, report, rotate  # noqa: E402 - benchmarks/ is on sys.path as a script

import ckpt  # noqa: E402


def make_model(million_params: int) -> keras.Model:
    """An MLP of about ``million_params`` million weights, compiled with Adam and built."""
    width = int((million_params * 1e6 / 4) ** 0.5)
    inputs = keras.Input((width,))
    x = inputs
    for _ in range(4):
        x = keras.layers.Dense(width, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def bench_keras(directory: Path, million_params: int, runs: int, warm: int) -> None:
    model = make_model(million_params)
    nbytes = sum(np.prod(v.shape) * 4 for v in model.variables + model.optimizer.variables)
    weights_file = directory / "m.weights.h5"
    ckpt_file = directory / "m.h5"
    model.save_weights(weights_file)
    ckpt.save(ckpt_file, {"model": model})
    mgr = ckpt.CheckpointManager(directory / "mgr", keep=ckpt.KeepLast(1))
    steps = iter(range(1, 10**6))
    mgr.save(next(steps), {"model": model}, force=True)

    def save_weights_fsync() -> None:
        # what ckpt promises on top: the bytes on disk before save() returns
        model.save_weights(weights_file)
        fsync_path(weights_file)

    medians = rotate({
        "keras save_weights": lambda: model.save_weights(weights_file),
        "keras save_weights + fsync": save_weights_fsync,
        "ckpt.save": lambda: ckpt.save(ckpt_file, {"model": model}),
        "CheckpointManager.save": lambda: mgr.save(next(steps), {"model": model}, force=True),
        "keras load_weights": lambda: model.load_weights(weights_file),
        "ckpt.load(into=model)": lambda: ckpt.load(ckpt_file, into={"model": model}),
        "CheckpointManager.restore(into=)": lambda: mgr.restore(into={"model": model}),
    }, runs, warm=warm * int(nbytes))
    base = {name: "keras save_weights" for name in medians}
    base.update({name: "keras load_weights" for name in
                 ("keras load_weights", "ckpt.load(into=model)",
                  "CheckpointManager.restore(into=)")})
    report(f"Keras ({keras.backend.backend()} backend): {nbytes / 2**20:.0f} MiB of weights "
           f"and Adam slots, median of {runs}", medians, base)


def bench_jax(directory: Path, million_params: int, runs: int, warm: int) -> None:
    try:
        import jax
        import jax.numpy as jnp
        import orbax.checkpoint as ocp
    except ImportError as error:
        print(f"\nJAX/Orbax: skipped ({error})")
        return
    width = int((million_params * 1e6 / 4) ** 0.5)
    keys = jax.random.split(jax.random.key(0), 4)
    tree = {f"dense_{i}": {"kernel": jax.random.normal(k, (width, width)),
                           "bias": jnp.zeros(width)} for i, k in enumerate(keys)}
    nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))
    checkpointer = ocp.StandardCheckpointer()
    orbax_dir = directory / "orbax"
    manager_dir = directory / "ckpt-jax"
    manager_dir.mkdir()

    def orbax_save() -> None:
        shutil.rmtree(orbax_dir, ignore_errors=True)
        checkpointer.save(orbax_dir, tree)
        checkpointer.wait_until_finished()

    def ckpt_save() -> None:
        ckpt.save(manager_dir / "s.h5", tree)

    orbax_save()
    ckpt_save()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
    template = jax.tree_util.tree_map(jnp.zeros_like, tree)
    mgr = ckpt.CheckpointManager(manager_dir / "mgr")
    mgr.save(0, tree)
    medians = rotate({
        "orbax save": orbax_save,
        "ckpt.save": ckpt_save,
        "orbax restore": lambda: jax.block_until_ready(checkpointer.restore(orbax_dir, abstract)),
        "ckpt restore(into=pytree)": lambda: jax.block_until_ready(mgr.restore(into=template)),
    }, runs, warm=warm * int(nbytes))
    base = {"orbax save": "orbax save", "ckpt.save": "orbax save",
            "orbax restore": "orbax restore", "ckpt restore(into=pytree)": "orbax restore"}
    report(f"JAX pytree: {nbytes / 2**20:.0f} MiB of float32, median of {runs}", medians, base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=25, help="millions of weights")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warm", type=int, default=2, metavar="N",
                        help="before each timed call, touch N times the state's size of "
                             "memory (0: off; see _timing.warm_memory)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-keras-"))
    try:
        bench_keras(directory, args.params, args.runs, args.warm)
        bench_jax(directory, args.params, args.runs, args.warm)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
