"""The SFT phase: cross-entropy on response tokens only, with gradient accumulation."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from asrl.config import SFTConfig
from asrl.data.render import IGNORE, Tokenized, collate, tokenize_all
from asrl.model.loading import Policy
from asrl.model.numerics import upcast
from asrl.parallel import distributed, zero
from asrl.phases.common import backward, clip_and_step, finite_mean, length_grouped_batches, set_lr
from asrl.phases.selection import SFTHistory, least_recently_trained
from asrl.types import Example, PhaseResult


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled positions, divided by ``num_items``.

    logits (B, T, V), labels (B, T) with IGNORE on prompt and padding. ``num_items`` is the
    number of response tokens in the whole accumulation window (default: in this batch), so
    a window of micro-batches gives exactly the loss of one big batch (TRL's convention).
    """
    shift_logits = upcast(logits[:, :-1])  # (B, T-1, V): position t predicts token t+1
    shift_labels = labels[:, 1:]  # (B, T-1)
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    if num_items is None:
        num_items = (shift_labels != IGNORE).sum()
    return total / max(int(num_items), 1)


def _forward_loss(
    policy: Policy,
    batch: dict[str, torch.Tensor],
    num_items: int,
    token_weight: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``sft_loss`` computed without logits for prompt and padding positions.

    Equal to ``sft_loss(model(...).logits, labels, num_items)`` (tested). ``token_weight``
    maps the labelled tokens' log-probs (N,) to weights on their cross-entropy (CHORD's phi).
    """
    batch = {k: v.to(policy.device) for k, v in batch.items()}
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    keep = targets != IGNORE
    with policy.autocast():
        ce = policy.response_ce(batch["input_ids"], batch["attention_mask"], keep, targets[keep])
    total = ce.sum() if token_weight is None else (token_weight(-ce) * ce).sum()
    return total / max(int(num_items), 1)


def dummy_loss(policy: Policy) -> torch.Tensor:
    """Zero, through one forward of the whole model (its gradients are zero).

    Sharded (FSDP), every process must make the same forward and backward calls: a process
    whose share of a batch is empty runs this instead of skipping.
    """
    pad = policy.tokenizer.pad_token_id
    batch = {
        "input_ids": torch.full((1, 2), pad),
        "attention_mask": torch.ones((1, 2), dtype=torch.long),
        "labels": torch.tensor([[IGNORE, pad]]),
    }
    return _forward_loss(policy, batch, 1) * 0.0


def examples_loss(
    policy: Policy,
    examples: list[Example],
    max_length: int,
    system_prompt: str | None = None,
    token_weight: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor | None, int, int]:
    """SFT loss of one batch made of ``examples`` (for SFT steps taken inside other phases).

    Returns (loss, examples used, tokens); loss is None when every example is too long. With
    several processes each takes its share of the batch (the loss is its part of the
    batch's loss: the all-reduced gradient is the whole batch's) and the counts are totals.
    """
    data, _ = tokenize_all(policy.tokenizer, examples, max_length, system_prompt)
    if not data:
        return None, 0, 0
    d = distributed.current()
    n = sum(t.n_response for t in data)
    mine = d.shard(data)
    if not mine:  # more processes than examples: contribute nothing, but take part
        tokens = d.sum([0.0])[0]
        loss = dummy_loss(policy) if d.lockstep_backward else torch.zeros((), requires_grad=True)
        return loss, len(data), int(tokens)
    batch = collate(mine, policy.tokenizer.pad_token_id)
    loss = _forward_loss(policy, batch, n, token_weight)
    tokens = d.sum([float(batch["attention_mask"].sum())])[0]
    return loss, len(data), int(tokens)


@torch.no_grad()
def validation_loss(policy: Policy, data: list[Tokenized], batch_size: int = 16) -> float:
    """Mean response-token cross-entropy over ``data`` (teacher-forced)."""
    if not data:
        return float("nan")
    was_training = policy.model.training
    policy.model.eval()
    total, count = 0.0, 0
    pad = policy.tokenizer.pad_token_id
    d = distributed.current()
    mine = d.shard(data)  # each process its share; the sums are combined below
    # sharded: as many forwards on every process
    chunks = (d if policy.sharded else distributed.Dist()).padded_chunks(mine, batch_size)
    for chunk in chunks:
        if not chunk:
            dummy_loss(policy)
            continue
        n = sum(t.n_response for t in chunk)
        total += float(_forward_loss(policy, collate(chunk, pad), n)) * n
        count += n
    total, count = d.sum([total, count])
    policy.model.train(was_training)
    return total / max(count, 1)


def run_sft_phase(
    policy: Policy,
    data: list[Tokenized],
    cfg: SFTConfig,
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    desc: str = "sft",
    history: SFTHistory | None = None,
) -> PhaseResult:
    """One pass over ``data`` (or ``cfg.max_examples_per_phase`` of it) at a constant LR.

    A capped phase takes a random sample; with ``cfg.unseen_first`` and the run's
    ``history``, the records no SFT phase trained on first, then the least recently trained
    (``least_recently_trained``; with no history, the same draw as ``rng.sample``). The
    result's ``record_ids`` say which records it trained on.
    """
    start = time.perf_counter()
    cap = cfg.max_examples_per_phase
    if cap is not None and len(data) > cap:
        seen = history if cfg.unseen_first and history is not None else SFTHistory()
        data = [
            data[i] for i in least_recently_trained([t.example_id for t in data], cap, rng, seen)
        ]
    batches = length_grouped_batches([len(t.ids) for t in data], cfg.batch_size, rng)
    windows = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
    set_lr(optimizer, cfg.lr)  # constant within the phase, reset every epoch (paper)
    params = policy.trainable_parameters()
    pad = policy.tokenizer.pad_token_id
    policy.model.train()
    d = distributed.current()  # several processes: each takes its share of every batch
    losses, norms, tokens = [], [], 0
    bar = tqdm(windows, desc=desc, unit="step", leave=False, dynamic_ncols=True, disable=d.quiet)
    for window in bar:
        num_items = sum(data[i].n_response for b in window for i in b)  # the whole window's
        step_loss = 0.0
        for b in window:
            mine = d.shard(b)
            if not mine:  # more processes than rows; in lockstep, it still takes part
                if d.lockstep_backward:
                    backward(dummy_loss(policy))
                continue
            batch = collate([data[i] for i in mine], pad)
            loss = _forward_loss(policy, batch, num_items)
            backward(loss)
            step_loss += loss.item()
            tokens += int(batch["attention_mask"].sum())
        step_loss = d.sum([step_loss])[0]
        norms.append(clip_and_step(params, optimizer, cfg.max_grad_norm, step_loss))
        losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.3f}")
    tokens = int(d.sum([tokens])[0])
    seconds = time.perf_counter() - start
    metrics = {
        "train/sft_loss": finite_mean(losses),
        "train/sft_grad_norm": finite_mean(norms),  # skipped (NaN) steps left out
        "train/lr": cfg.lr,
        "perf/tokens_per_s": tokens / max(seconds, 1e-9),
    }
    return PhaseResult(
        "sft",
        metrics,
        examples_seen=len(data),
        tokens_trained=tokens,
        seconds=seconds,
        steps=len(windows),
        record_ids=[t.example_id for t in data],
    )


def sft_grad_norm_probe(
    policy: Policy,
    train: list[Example],
    batch_size: int,
    max_length: int,
    rng: random.Random,
    system_prompt: str | None = None,
) -> tuple[float, int]:
    """Gradient norm of the SFT loss on one random train batch, without stepping.

    Returns (norm, tokens processed). Gradients are cleared before and after.
    """
    chosen = rng.sample(train, min(batch_size, len(train)))
    params = policy.trainable_parameters()
    for p in params:
        p.grad = None
    was_training = policy.model.training
    policy.model.train()
    loss, _, tokens = examples_loss(policy, chosen, max_length, system_prompt)
    if loss is None:
        policy.model.train(was_training)
        return float("nan"), 0
    d = distributed.current()
    if zero.current() is None:
        loss.backward()
        d.all_reduce_grads(params)  # several processes: the batch's gradient
        grads = [p.grad for p in params if p.grad is not None]
    else:  # DeepSpeed's engine owns .grad (and reduces it into its partitions): aside
        mine = torch.autograd.grad(loss, params, allow_unused=True)
        grads = d.sum_tensors(
            [torch.zeros_like(p) if g is None else g for g, p in zip(mine, params)]
        )
    # sharded gradients (DTensors) give a DTensor norm over the whole gradient: gathered
    norm = float(distributed.full_tensor(torch.nn.utils.get_total_norm(grads))) if grads else 0.0
    for p in params:
        p.grad = None
    policy.model.train(was_training)
    return norm, tokens
