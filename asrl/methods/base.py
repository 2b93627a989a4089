"""What a method is: an object that names the phases of each epoch and runs them.

The controller (``asrl.train.loop``) asks ``phases(epoch, view)`` for the epoch's phase
names (a generator may decide lazily, after seeing earlier phases), runs each through
``run_phase(name, ctx)``, reports the result to ``observe``, and checkpoints ``state()``.
The shared phases, ``sft`` and ``grpo``, are run here; a method with a phase of its own
(CHORD's blend, ReLIFT's buffered SFT) runs it in its own file. Adding a method is one file
in this package plus its line in ``asrl/methods/__init__.py``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from asrl.config import Config, ScheduleConfig
from asrl.data.render import TokenizedCache
from asrl.model.loading import Policy
from asrl.phases.grpo import run_grpo_phase
from asrl.phases.questions import phase_seed, procedural_questions, questions_needed
from asrl.phases.selection import PassRates, SFTHistory
from asrl.phases.sft import run_sft_phase
from asrl.rewards.builtin import RewardSet
from asrl.tracking.metrics import MetricsLog, console
from asrl.types import Example, PhaseResult


@dataclass
class PhaseContext:
    """What a phase runner gets from the run: the model and its optimizers, the current
    train split, the rewards, and this phase's seeds (``rng`` for batches, ``seed`` for
    sampling). Nothing else of the run is reachable from a phase."""

    cfg: Config
    policy: Policy
    train: list[Example]
    rewards: RewardSet
    optimizers: dict[str, torch.optim.Optimizer]
    pass_rates: PassRates
    tokenized: TokenizedCache
    epoch: int
    rng: random.Random
    seed: int
    desc: str
    sft_history: SFTHistory  # when an SFT phase last trained each train record
    heldout: tuple[list[Example], ...]  # the validation and test splits (never trained on)


class RunView(Protocol):
    """What a method may look at while choosing phases (only the adaptive one does)."""

    metrics: MetricsLog

    def probe_sft_grad_norm(self, epoch: int, slot: int) -> float: ...


class Method:
    """Base: a fixed list of phases every epoch, no state."""

    name = "base"
    # whether a run may resume in the middle of an epoch (its phase list can be replayed)
    resumable_mid_epoch = True
    # whether any epoch runs the "sft" phase: then the train split needs examples within
    # data.max_length tokens (the loop checks before the model works)
    runs_sft = True
    runs_grpo = True  # whether any epoch samples completions (grpo.max_new_tokens matters)

    def __init__(self, cfg: ScheduleConfig, seed: int = 0) -> None:
        self.cfg, self.seed = cfg, seed

    def phases(self, epoch: int, view: RunView | None = None) -> Iterable[str]:
        """Phase names for ``epoch`` (from 1), in order."""
        raise NotImplementedError

    def run_phase(self, phase: str, ctx: PhaseContext) -> PhaseResult:
        """Run one of this method's phases; the shared ones are ``sft`` and ``grpo``."""
        if phase == "sft":
            return run_sft(ctx)
        if phase == "grpo":
            return run_grpo(ctx)
        raise ValueError(f"{self.name}: unknown phase {phase!r}")

    def observe(self, phase: str, result: PhaseResult) -> None:
        """Called after each phase with its result."""

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state the checkpoint keeps for resume."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass


def run_sft(ctx: PhaseContext) -> PhaseResult:
    """The SFT phase on the current train split (over-length examples dropped, counted)."""
    data, dropped = ctx.tokenized(ctx.train)
    sft, opt = ctx.cfg.sft, ctx.optimizers["sft"]
    result = run_sft_phase(ctx.policy, data, sft, opt, ctx.rng, ctx.desc, ctx.sft_history)
    ctx.sft_history.mark(result.record_ids, ctx.epoch)
    result.metrics["data/dropped_too_long"] = len(dropped)
    if dropped:
        console(f"sft: dropped {len(dropped)} example(s) over {ctx.cfg.data.max_length} tokens")
    return result


def run_grpo(ctx: PhaseContext) -> PhaseResult:
    """The GRPO phase: rounds of sampled groups, scored, group-normalised, clipped updates."""
    return run_grpo_phase(
        ctx.policy,
        grpo_questions(ctx),
        ctx.cfg.grpo,
        ctx.rewards,
        ctx.optimizers["grpo"],
        ctx.rng,
        ctx.seed,
        ctx.cfg.data.system_prompt,
        ctx.desc,
        pass_rates=ctx.pass_rates,
        sft_history=ctx.sft_history,
    )


def grpo_questions(ctx: PhaseContext) -> list[Example]:
    """What a GRPO phase draws its questions from (``grpo.question_source``): the train
    split, or new procedural questions, none with the text of a question the dataset holds."""
    g, data = ctx.cfg.grpo, ctx.cfg.data
    if g.question_source == "train":
        return ctx.train
    return procedural_questions(
        g.question_source,
        questions_needed(g),
        phase_seed(ctx.seed),
        ctx.cfg.format.spec(),
        data.generate.mix,
        data.reasoning_gym,
        [ctx.train, *ctx.heldout],
    )
