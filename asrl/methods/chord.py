"""CHORD-style blended loss: L = (1 - mu) * L_GRPO + mu * L_SFT at every GRPO step.

The pure pieces (``chord_mu``, ``chord_phi``) are unit-tested with hand-computed numbers;
``run_chord_phase`` wires them into the GRPO runner through its hooks: each GRPO optimizer
step scales the GRPO loss by (1 - mu) and adds mu times the SFT loss of a micro-batch of
expert (reference) responses drawn from the train split, then takes one step with the GRPO
optimizer (one optimizer for the blended objective, as in CHORD).
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from asrl.config import GRPOConfig, ScheduleConfig
from asrl.methods.base import Method, PhaseContext, RunView, grpo_questions
from asrl.model.loading import Policy
from asrl.parallel import distributed
from asrl.phases.common import backward
from asrl.phases.grpo import run_grpo_phase
from asrl.phases.grpo_update import GRPOHooks
from asrl.phases.selection import PassRates
from asrl.phases.sft import examples_loss
from asrl.rewards.builtin import RewardSet
from asrl.types import Example, PhaseResult


def chord_mu(
    step: int, mu_peak: float, mu_valley: float, warmup_steps: int, decay_steps: int
) -> float:
    """mu at global GRPO step ``step`` (from 0): linear 0 -> mu_peak over ``warmup_steps``,
    then cosine from mu_peak down to mu_valley over ``decay_steps``, then mu_valley."""
    if step < warmup_steps:
        return mu_peak * step / warmup_steps
    t = 1.0 if decay_steps == 0 else min(step - warmup_steps, decay_steps) / decay_steps
    return mu_valley + (mu_peak - mu_valley) * 0.5 * (1.0 + math.cos(math.pi * t))


def chord_phi(token_logps: torch.Tensor) -> torch.Tensor:
    """Token weight phi = p (1 - p), p = exp(logp), detached: (N,) -> (N,).

    Down-weights tokens the policy already predicts (p ~ 1) and ones far off-policy (p ~ 0).
    """
    p = token_logps.detach().exp()
    return p * (1.0 - p)


def run_chord_phase(
    policy: Policy,
    train: list[Example],
    cfg: GRPOConfig,
    sched: ScheduleConfig,
    rewards: RewardSet,
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    seed: int,
    step0: int,
    max_length: int,
    system_prompt: str | None = None,
    desc: str = "chord",
    pass_rates: PassRates | None = None,
    questions: list[Example] | None = None,
) -> PhaseResult:
    """One GRPO round whose every optimizer step k uses mu = chord_mu(step0 + k, ...).

    A weight of exactly 0 skips that side's backward pass (mu_valley = 0 costs no SFT).
    The expert micro-batches come from their own RNG (from ``seed``) so the GRPO side sees
    exactly what ``run_grpo_phase`` would with the same ``rng`` and ``seed``. The SFT side
    samples ``train``; the GRPO side draws from ``questions`` (default: ``train`` too).
    """
    sft_rng = random.Random(f"{seed}:chord-sft")
    counts = {"examples": 0, "tokens": 0}

    def mu(k: int) -> float:
        return chord_mu(
            step0 + k,
            sched.chord_mu_peak,
            sched.chord_mu_valley,
            sched.chord_warmup_steps,
            sched.chord_decay_steps,
        )

    def sft_backward(k: int) -> dict[str, float]:
        m = mu(k)
        if m == 0.0:
            return {"train/chord_mu": 0.0}
        chosen = sft_rng.sample(train, min(sched.chord_sft_batch_size, len(train)))
        weight = chord_phi if sched.chord_phi else None
        loss, n_examples, n_tokens = examples_loss(
            policy, chosen, max_length, system_prompt, weight
        )
        if loss is None:
            return {"train/chord_mu": m}
        backward(m * loss)
        counts["examples"] += n_examples
        counts["tokens"] += n_tokens
        sft_loss = distributed.current().sum([loss.item()])[0]  # the processes' shares add up
        return {"train/chord_mu": m, "train/chord_sft_loss": sft_loss}

    hooks = GRPOHooks(loss_scale=lambda k: 1.0 - mu(k), extra_backward=sft_backward)
    result = run_grpo_phase(
        policy,
        train if questions is None else questions,
        cfg,
        rewards,
        optimizer,
        rng,
        seed,
        system_prompt,
        desc,
        hooks,
        pass_rates,
    )
    result.phase = "chord"
    result.examples_seen += counts["examples"]
    result.tokens_trained += counts["tokens"]
    return result


class Chord(Method):
    """CHORD-style: one ``chord`` phase per epoch; each GRPO step blends in the SFT loss
    with weight mu (``chord_mu`` over the run's global GRPO step)."""

    name = "chord"
    runs_sft = False  # its SFT term skips over-length examples (one blended phase)

    def __init__(self, cfg: ScheduleConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        self.step = 0  # GRPO optimizer steps taken so far in the run

    def phases(self, epoch: int, view: RunView | None = None) -> list[str]:
        return ["chord"]

    def run_phase(self, phase: str, ctx: PhaseContext) -> PhaseResult:
        if phase != "chord":
            return super().run_phase(phase, ctx)
        cfg = ctx.cfg
        return run_chord_phase(
            ctx.policy,
            ctx.train,
            cfg.grpo,
            cfg.schedule,
            ctx.rewards,
            ctx.optimizers["grpo"],
            ctx.rng,
            ctx.seed,
            step0=self.step,  # global GRPO step count, kept (and resumed) here
            max_length=cfg.data.max_length,
            system_prompt=cfg.data.system_prompt,
            desc=ctx.desc,
            pass_rates=ctx.pass_rates,
            questions=grpo_questions(ctx),
        )

    def observe(self, phase: str, result: PhaseResult) -> None:
        self.step += result.steps

    def state(self) -> dict[str, Any]:
        return {"step": self.step}

    def restore(self, state: dict[str, Any]) -> None:
        self.step = state.get("step", 0)
