"""Phase name -> runner. A runner takes the loop's ``Run`` and returns a ``PhaseResult``.

``Run.run_phase`` looks the phase up here and keeps the compute ledger for every phase, so
methods are compared on the same accounting. A new method adds a runner, not a branch.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from asrl import distributed, zero
from asrl.models import Policy
from asrl.phases.chord import run_chord_phase
from asrl.phases.grpo import run_grpo_phase
from asrl.phases.relift import run_relift_phase
from asrl.phases.sft import examples_loss, run_sft_phase
from asrl.tracking import console
from asrl.types import Example, PhaseResult

# (run, epoch, rng, rollout_seed, desc) -> PhaseResult; ``run`` is asrl.loop.Run
Runner = Callable[[Any, int, random.Random, int, str], PhaseResult]


def sft(run: Any, epoch: int, rng: random.Random, seed: int, desc: str) -> PhaseResult:
    cfg = run.cfg
    data, dropped = run.tokenized(run.dataset.train)
    result = run_sft_phase(run.policy, data, cfg.sft, run.optimizers["sft"], rng, desc)
    result.metrics["data/dropped_too_long"] = len(dropped)
    if dropped:
        console(f"sft: dropped {len(dropped)} example(s) over {cfg.data.max_length} tokens")
    return result


def grpo(run: Any, epoch: int, rng: random.Random, seed: int, desc: str) -> PhaseResult:
    cfg = run.cfg
    return run_grpo_phase(
        run.policy,
        run.dataset.train,
        cfg.grpo,
        run.rewards,
        run.optimizers["grpo"],
        rng,
        seed,
        cfg.data.system_prompt,
        desc,
        pass_rates=run.pass_rates,
    )


def chord(run: Any, epoch: int, rng: random.Random, seed: int, desc: str) -> PhaseResult:
    cfg = run.cfg
    return run_chord_phase(
        run.policy,
        run.dataset.train,
        cfg.grpo,
        cfg.schedule,
        run.rewards,
        run.optimizers["grpo"],
        rng,
        seed,
        step0=run.schedule.step,  # global GRPO step count, kept (and resumed) by the schedule
        max_length=cfg.data.max_length,
        system_prompt=cfg.data.system_prompt,
        desc=desc,
        pass_rates=run.pass_rates,
    )


def relift(run: Any, epoch: int, rng: random.Random, seed: int, desc: str) -> PhaseResult:
    cfg = run.cfg
    return run_relift_phase(
        run.policy,
        run.dataset.train,
        cfg.grpo,
        cfg.sft,
        run.rewards,
        run.optimizers,
        run.schedule.buffer,
        rng,
        seed,
        cfg.data.max_length,
        cfg.data.system_prompt,
        desc,
        pass_rates=run.pass_rates,
    )


PHASES: dict[str, Runner] = {"sft": sft, "grpo": grpo, "chord": chord, "relift": relift}


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
