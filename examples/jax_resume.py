"""Train the seed MLP in pure JAX + optax with checkpoints; resume it exactly after a kill.

    python examples/jax_resume.py --dir /tmp/jax-run --steps 300 --save-every 25

Kill it at any moment (Ctrl-C, SIGTERM, even SIGKILL) and run the same command
again: it continues after the newest checkpoint, and the final parameters, optax
state and PRNG key are bit for bit those of an uninterrupted run.

The state is a dict the loop saves as it is at each step's end, so each step
writes its new values back into it: ``state["params"] = ...``. After a resume,
``loop.state`` holds the restored pytrees: jax.Arrays, the optax NamedTuples
rebuilt from the template.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ckpt
from ckpt.demo import make_digits


def init_params(key: jax.Array) -> dict:
    """``digits(784) -> Dense(64) -> Dense(64) -> Dense(10)``, Glorot-uniform kernels."""
    sizes = [(784, 64), (64, 64), (64, 10)]
    params = {}
    for name, (fan_in, fan_out), layer_key in zip(("dense_1", "dense_2", "predictions"),
                                                  sizes, jax.random.split(key, 3)):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        params[name] = {"kernel": jax.random.uniform(layer_key, (fan_in, fan_out),
                                                     minval=-limit, maxval=limit),
                        "bias": jnp.zeros(fan_out)}
    return params


def forward(params: dict, x: jax.Array, key: jax.Array) -> jax.Array:
    """Logits; dropout (rate 0.1) after each hidden layer, drawn from ``key``."""
    for name, layer_key in zip(("dense_1", "dense_2"), jax.random.split(key, 2)):
        x = jax.nn.relu(x @ params[name]["kernel"] + params[name]["bias"])
        keep = jax.random.bernoulli(layer_key, 0.9, x.shape)
        x = jnp.where(keep, x / 0.9, 0.0)
    return x @ params["predictions"]["kernel"] + params["predictions"]["bias"]


optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))


@jax.jit
def train_step(params: dict, opt_state: tuple, key: jax.Array, x: jax.Array,
               y: jax.Array) -> tuple:
    """One Adam update; the key is split so every step draws fresh dropout masks."""
    key, dropout_key = jax.random.split(key)

    def loss_fn(p: dict) -> jax.Array:
        logits = forward(p, x, dropout_key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, key, loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=300, help="total training steps")
    parser.add_argument("--save-every", type=int, default=25, help="checkpoint interval")
    args = parser.parse_args(argv)

    x_train, y_train = make_digits(2048, seed=0)
    params = init_params(jax.random.key(0))
    order = ckpt.DataOrder(len(x_train), batch_size=64, seed=1)
    state = {"params": params, "opt_state": optimizer.init(params),
             "key": jax.random.key(42), "data": order}
    manager = ckpt.CheckpointManager(args.dir, keep=ckpt.KeepLast(2),
                                     save_every=args.save_every)
    with manager, ckpt.TrainingLoop(manager, state, total_steps=args.steps) as loop:
        state = loop.state  # after a resume: the restored jax.Arrays and NamedTuples
        if loop.resumed_from is not None:
            print(f"resumed after step {loop.resumed_from}", flush=True)
        print(f"start {loop.start_step}", flush=True)
        for step in loop:
            batch = order.next_batch()
            state["params"], state["opt_state"], state["key"], loss = train_step(
                state["params"], state["opt_state"], state["key"], x_train[batch],
                y_train[batch])
            loop.report(loss=float(loss))
            if step % 50 == 0 or step == args.steps - 1:
                print(f"step {step} loss {float(loss):.4f}", flush=True)
    status = "preempted" if loop.preempted else "done"
    print(f"{status}: checkpoints {manager.all_steps()}", flush=True)


if __name__ == "__main__":
    main()
