"""Pieces both phases use: per-token log-probs, optimizer steps, length-grouped batching."""

from __future__ import annotations

import functools
import inspect
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from asrl import distributed, interrupt, zero
from asrl.numerics import upcast

# per-token log-probs, or (log-probs, entropies) when asked ``with_entropy``
LogpsOut = torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]


@functools.cache
def _cache_argument(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword argument that passes a KV cache back into ``model``: ``cache`` in the
    transformers versions that renamed it (passing the old ``past_key_values`` warns there),
    ``past_key_values`` in older ones."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    return {_cache_argument(type(base)): cache}


def kv_cache(out: Any) -> Any:
    """The KV cache of a forward's output (``use_cache=True``), under either name; reading
    the old name where it was renamed warns."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position. logits (B, T, V), targets (B, T) -> (B, T), fp32.

    Computed row by row so the (B, T, V) fp32 log-softmax never exists all at once.
    """
    return token_logps_entropy(logits, targets, entropy=False)[0]


def token_logps_entropy(
    logits: torch.Tensor, targets: torch.Tensor, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logps`` and, from the same log-softmax, the entropy of each position's
    distribution (nats, without gradient; None unless ``entropy``). -> (B, T), (B, T)."""
    out, ents = [], []
    for row_logits, row_targets in zip(logits, targets):  # (T, V), (T,)
        lp = F.log_softmax(upcast(row_logits), dim=-1)
        out.append(lp.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1))
        if entropy:
            with torch.no_grad():
                ents.append(-(lp.exp() * lp).sum(-1))
    return torch.stack(out), torch.stack(ents) if entropy else None


def completion_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_completion: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> LogpsOut:
    """Log-probs of the last ``n_completion`` tokens of each row. -> (B, n_completion).

    Logits are divided by the sampling temperature, as TRL does, so the ratio compares the
    distribution the completions were actually sampled from. ``with_entropy``: returns
    (log-probs, entropies), the entropy of each position's tempered distribution computed
    from the same log-softmax (no gradient), as TRL's ``entropy`` metric.
    """
    # logits_to_keep=C+1 returns the logits that predict the last C tokens (plus one extra).
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_to_keep=n_completion + 1,
        use_cache=False,
    ).logits[:, :-1]  # (B, C, V)
    return _tempered_logps(logits, input_ids[:, -n_completion:], temperature, with_entropy)


def _tempered_logps(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool = False
) -> LogpsOut:
    """``token_logps`` of logits divided by the sampling temperature (and the entropies)."""
    scaled = logits / temperature if temperature != 1.0 else logits
    if with_entropy:
        return token_logps_entropy(scaled, targets)
    return token_logps(scaled, targets)


def shared_prompt_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_completion: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> LogpsOut:
    """``completion_logps`` with each distinct prompt run once (GRPO groups share one).

    Rows are left-padded prompts followed by right-padded completions. The distinct prompts
    are run once, their KV cache is copied to every row that has them (a differentiable
    copy: the gradient of the shared prompt sums over its rows, as it would with the prompt
    repeated), then the completions run on top. Equal to ``completion_logps`` (tested); it
    saves (rows - distinct prompts) x prompt length tokens of forward and backward.
    """
    C = n_completion
    P = input_ids.size(1) - C
    prompt_ids, prompt_mask = input_ids[:, :P], attention_mask[:, :P]
    distinct: dict[tuple[int, ...], int] = {}
    rows = [distinct.setdefault(tuple(r), len(distinct)) for r in prompt_ids.tolist()]
    if len(distinct) == len(rows):
        return completion_logps(model, input_ids, attention_mask, C, temperature, with_entropy)
    first = torch.tensor([rows.index(u) for u in range(len(distinct))], device=input_ids.device)
    select = torch.tensor(rows, device=input_ids.device)
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=prompt_ids[first],
        attention_mask=prompt_mask[first],
        position_ids=pos[first, :P],
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[select]  # (B, 1, V): the last prompt position predicts token 0
    if C > 1:
        cache = kv_cache(out)
        cache.batch_select_indices(select)
        rest = model(
            input_ids=input_ids[:, P : P + C - 1],
            attention_mask=attention_mask[:, : P + C - 1],
            position_ids=pos[:, P : P + C - 1],
            **cache_kwargs(model, cache),
            cache_position=torch.arange(P, P + C - 1, device=input_ids.device),
            use_cache=True,
        ).logits  # (B, C - 1, V)
        logits = torch.cat([logits, rest], dim=1)
    return _tempered_logps(logits, input_ids[:, P:], temperature, with_entropy)


class TrainingDiverged(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


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


# The guard of the phase now running, set by the loop (asrl.loop.Run.run_phase): one place
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
    """``loss.backward()``; in a DeepSpeed ZeRO run, through its engine (asrl.zero)."""
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
