"""Train a small CNN with checkpoints, and resume it exactly after any interruption.

    python examples/torch_resume.py --dir /tmp/run --steps 200 --save-every 20

Kill it at any moment (Ctrl-C, SIGTERM, even SIGKILL) and run the same command
again: it continues after the newest checkpoint, and the final weights, optimizer,
scheduler and RNG state are bit for bit those of an uninterrupted run. Steps run
1..N and checkpoint N holds the state after N updates. Ctrl-C and SIGTERM save the
step in progress and exit with 130 and 143 (128 + the signal, as the shell does).

What makes the resume exact:

* the state holds everything that changes while training: the model (weights and
  batch-norm statistics), AdamW, the LR scheduler, the data position
  (:class:`~ckpt.integrations.torch.ResumableSampler`) and every RNG stream
  (:class:`ckpt.RNGState`: dropout draws from torch's global generator);
* the DataLoader has its own ``generator``, so starting a loader mid-epoch does not
  draw from the global generator that dropout uses;
* one thread and deterministic algorithms, so the same inputs give the same bits.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ckpt
from ckpt.integrations.torch import ResumableSampler

IMAGE_SIZE = 12
CLASSES = 4


def make_deterministic(threads: int) -> None:
    """Same inputs, same bits: fixed thread count and deterministic kernels."""
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)


def make_dataset(samples: int = 1024, seed: int = 0) -> TensorDataset:
    """Noisy images of ``CLASSES`` fixed random patterns; a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    patterns = rng.standard_normal((CLASSES, 1, IMAGE_SIZE, IMAGE_SIZE))
    labels = rng.integers(0, CLASSES, samples)
    images = patterns[labels] + 1.5 * rng.standard_normal((samples, 1, IMAGE_SIZE, IMAGE_SIZE))
    return TensorDataset(torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels))


def make_model() -> nn.Module:
    """A tiny CNN with batch norm and dropout: both carry state or randomness."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(16, CLASSES),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The example's options; every help text names its default."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="checkpoint directory (required)")
    parser.add_argument("--steps", type=int, default=200, metavar="N",
                        help="total training steps, run 1..N (default: %(default)s)")
    parser.add_argument("--save-every", type=int, default=20, metavar="K",
                        help="checkpoint every K steps, and the last one (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="samples per step (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train (or resume) to ``--steps``; the exit code: 0, or 128 + the stop signal."""
    args = parse_args(argv)
    make_deterministic(args.threads)
    # every stream RNGState saves starts from a seed, or a fresh run could not be
    # compared with a resumed one (a resumed run overwrites them all from its checkpoint)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)

    dataset = make_dataset()
    sampler = ResumableSampler(ckpt.DataOrder(len(dataset), batch_size=args.batch_size,
                                              seed=1))
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                        generator=torch.Generator())
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2,
                                                    total_steps=args.steps)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler,
             "sampler": sampler, "rng": ckpt.RNGState()}

    manager = ckpt.CheckpointManager(args.dir, keep=ckpt.KeepLast(2),
                                     save_every=args.save_every)
    with manager, ckpt.TrainingLoop(manager, state, total_steps=args.steps) as loop:
        # created after the loop restored the sampler, so it starts where it stopped
        batches = sampler.batches(loader)
        if loop.resumed_from is not None:
            print(f"resumed after step {loop.resumed_from}", flush=True)
        print(f"start {loop.start_step}", flush=True)
        if loop.remaining == 0:
            print(f"already finished: {args.steps} steps", flush=True)
            return 0
        started = time.perf_counter()
        model.train()
        for step in loop:
            images, labels = next(batches)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loop.report(loss=loss.item())
            if step % 50 == 0 or step == args.steps:
                print(f"step {step} loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]:.5f}",
                      flush=True)
    elapsed = time.perf_counter() - started
    status = "preempted" if loop.preempted else "done"
    print(f"{status}: steps {loop.start_step}..{loop.last_saved} took {elapsed:.2f} s; "
          f"checkpoints {manager.all_steps()}", flush=True)
    return 0 if loop.stop_signal is None else 128 + loop.stop_signal


if __name__ == "__main__":
    sys.exit(main())
