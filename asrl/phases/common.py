"""Optimizer-step plumbing both phases use: the non-finite step guard, backward and clipped
steps (ZeRO-aware), LR setting, length-grouped batching."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from asrl.errors import TrainingDiverged
from asrl.parallel import distributed, interrupt, zero


@dataclass
class StepGuard:
    """Skips optimizer steps whose loss or gradient norm is NaN/inf and counts them.

    One bad batch must not poison the weights and both Adam moment estimates (a single NaN
    step makes every later step NaN); many in a row means training has diverged, and we
    stop with a message rather than write NaN weights.
    """

    max_bad_in_row: int = 5
    phase: str = "train"
    skipped: int = 0
    in_row: int = 0

    def ok(self, loss: float | None, norm: float) -> bool:
        if math.isfinite(norm) and (loss is None or math.isfinite(loss)):
            self.in_row = 0
            return True
        self.skipped += 1
        self.in_row += 1
        if self.in_row >= self.max_bad_in_row:
            raise TrainingDiverged(
                f"{self.phase}: {self.in_row} optimizer steps in a row had a non-finite loss "
                f"or gradient (loss {loss}, grad norm {norm}); the weights were not updated "
                f"by them. Try a lower learning rate ({self.phase}.lr), a smaller "
                "max_grad_norm, or model.autocast: none"
            )
        return False


# The guard of the phase now running, set by the loop (asrl.train.loop.Run.run_phase): one place
# counts skipped steps for every runner (sft, grpo, chord, relift) without threading a
# parameter through each signature. None (unit tests, direct calls): skip, do not count.
_active_guard: StepGuard | None = None


@contextmanager
def guarded_steps(guard: StepGuard) -> Iterator[StepGuard]:
    global _active_guard
    previous, _active_guard = _active_guard, guard
    try:
        yield guard
    finally:
        _active_guard = previous


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()``; in a DeepSpeed ZeRO run, through its engine (asrl.parallel.zero)."""
    engine = zero.current()
    if engine is None:
        loss.backward()
    else:
        engine.backward(loss)


def clip_and_step(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    max_norm: float,
    loss: float | None = None,
) -> float:
    """All-reduce (several processes), clip gradients, step, zero; returns the pre-clip norm.

    ``loss`` must be the same on every process (the summed step loss), so that all of them
    agree on skipping a non-finite step.

    A step whose ``loss`` or gradient norm is not finite is skipped (gradients zeroed,
    weights and optimizer state untouched) and counted by the active :class:`StepGuard`.
    A stop asked for by SIGTERM / Ctrl-C is honoured here, after the step completes.

    DeepSpeed ZeRO (``optimizer`` is a ``zero.PhaseOptimizer``): its engine reduces, clips
    and steps, and itself skips a step whose gradient norm is not finite; the guard counts
    it. (A non-finite loss with finite gradients is stepped there.)
    """
    guard = _active_guard or StepGuard(max_bad_in_row=2**31)
    if isinstance(optimizer, zero.PhaseOptimizer):
        norm = optimizer.step_engine(max_norm)
        guard.ok(None, norm)  # counts what DeepSpeed skipped
        interrupt.check()
        return norm
    distributed.current().all_reduce_grads(params)  # sharded: FSDP's backward summed them
    norm = clip_grad_norm(params, max_norm if max_norm > 0 else float("inf"))
    if guard.ok(loss, norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    interrupt.check()
    return norm


def finite_mean(values: Sequence[float]) -> float:
    """The mean of the finite values (a skipped step's NaN left out); NaN if none is."""
    good = [v for v in values if math.isfinite(v)]
    return sum(good) / len(good) if good else float("nan")


def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` returning the pre-clip norm as a float. Sharded (DTensor)
    gradients give a DTensor norm over the whole gradient: gathered (a tiny collective)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(distributed.full_tensor(norm))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, megabatch: int = 16
) -> list[list[int]]:
    """Shuffled batches of indices whose members have similar lengths (less padding).

    Shuffle, sort within windows of ``megabatch * batch_size`` by length, cut into batches,
    then shuffle the batch order so long and short batches interleave.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * megabatch
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
