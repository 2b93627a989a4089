"""Pieces both phases use: per-token log-probs, optimizer steps, length-grouped batching."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position. logits (B, T, V), targets (B, T) -> (B, T), fp32.

    Computed row by row so the (B, T, V) fp32 log-softmax never exists all at once.
    """
    out = []
    for row_logits, row_targets in zip(logits, targets):  # (T, V), (T,)
        lp = F.log_softmax(row_logits.float(), dim=-1)
        out.append(lp.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1))
    return torch.stack(out)


def completion_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_completion: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-probs of the last ``n_completion`` tokens of each row. -> (B, n_completion).

    Logits are divided by the sampling temperature, as TRL does, so the ratio compares the
    distribution the completions were actually sampled from.
    """
    # logits_to_keep=C+1 returns the logits that predict the last C tokens (plus one extra).
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=n_completion + 1
    ).logits[:, :-1]  # (B, C, V)
    if temperature != 1.0:
        logits = logits / temperature
    return token_logps(logits, input_ids[:, -n_completion:])


def clip_and_step(
    params: Sequence[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_norm: float
) -> float:
    """Clip gradients, step, zero; returns the pre-clip gradient norm."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


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
