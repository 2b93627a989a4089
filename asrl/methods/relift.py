"""ReLIFT-style GRPO: learn by imitation exactly where reinforcement has nothing to learn from.

A prompt whose rollouts all fail (correctness component <= 0, or missing, for every
completion of its group) gives GRPO zero advantage everywhere. Such prompts are buffered
with their reference responses; once the buffer holds ``schedule.relift_buffer`` examples,
one SFT step (the SFT optimizer, at ``sft.lr``) is taken on the buffer, after the round's
GRPO updates, and the buffer is cleared. The buffer survives resume through the schedule's
``state()``.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch

from asrl.config import GRPOConfig, ScheduleConfig, SFTConfig
from asrl.methods.base import Method, PhaseContext, RunView, grpo_questions
from asrl.model.loading import Policy
from asrl.parallel import distributed
from asrl.phases.common import backward, clip_and_step, set_lr
from asrl.phases.grpo import run_grpo_phase
from asrl.phases.grpo_update import GRPOHooks
from asrl.phases.selection import PassRates
from asrl.phases.sft import examples_loss
from asrl.rewards.builtin import RewardSet
from asrl.types import Example, PhaseResult, Rollout


def all_fail_groups(ro: Rollout, group_size: int) -> list[Example]:
    """The prompts (one Example per group) none of whose completions was correct."""
    scores = ro.components.get("correctness")
    if scores is None:  # no correctness reward configured: fall back to the total
        scores = ro.rewards
    out = []
    for g in range(0, len(ro.examples), group_size):
        group = scores[g : g + group_size]
        if all(s is None or s <= 0 for s in group):
            out.append(ro.examples[g])
    return out


@dataclasses.dataclass
class ReliftBuffer:
    capacity: int
    examples: list[Example] = dataclasses.field(default_factory=list)
    sft_steps: int = 0  # over the whole run

    def add(self, examples: list[Example]) -> int:
        have = {e.id for e in self.examples}
        new = [e for e in examples if e.id not in have]
        self.examples.extend(new)
        return len(new)

    def full(self) -> bool:
        return len(self.examples) >= self.capacity

    def state(self) -> dict[str, Any]:
        return {
            "examples": [dataclasses.asdict(e) for e in self.examples],
            "sft_steps": self.sft_steps,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.examples = [
            Example(**{**d, "messages": tuple(d["messages"])}) for d in state.get("examples", [])
        ]
        self.sft_steps = state.get("sft_steps", 0)


def run_relift_phase(
    policy: Policy,
    train: list[Example],
    cfg: GRPOConfig,
    sft_cfg: SFTConfig,
    rewards: RewardSet,
    optimizers: dict[str, torch.optim.Optimizer],
    buffer: ReliftBuffer,
    rng: random.Random,
    seed: int,
    max_length: int,
    system_prompt: str | None = None,
    desc: str = "relift",
    pass_rates: PassRates | None = None,
) -> PhaseResult:
    counts = {"examples": 0, "tokens": 0, "steps": 0}

    def after_round(ro: Rollout) -> dict[str, float]:
        added = buffer.add(all_fail_groups(ro, cfg.num_generations))
        metrics = {"relift/added": float(added)}
        if buffer.full():
            policy.model.train()
            loss, n_examples, n_tokens = examples_loss(
                policy, buffer.examples, max_length, system_prompt
            )
            if loss is not None:
                set_lr(optimizers["sft"], sft_cfg.lr)
                backward(loss)
                params = policy.trainable_parameters()
                total = distributed.current().sum([loss.item()])[0]  # processes' shares
                clip_and_step(params, optimizers["sft"], sft_cfg.max_grad_norm, total)
                metrics["relift/sft_loss"] = total
                counts["examples"] += n_examples
                counts["tokens"] += n_tokens
                counts["steps"] += 1
                buffer.sft_steps += 1
            buffer.examples.clear()
        metrics["relift/buffer_size"] = float(len(buffer.examples))
        metrics["relift/sft_steps"] = float(counts["steps"])
        metrics["relift/sft_steps_total"] = float(buffer.sft_steps)
        return metrics

    result = run_grpo_phase(
        policy,
        train,
        cfg,
        rewards,
        optimizers["grpo"],
        rng,
        seed,
        system_prompt,
        desc,
        GRPOHooks(after_round=after_round),
        pass_rates,
    )
    result.phase = "relift"
    result.examples_seen += counts["examples"]
    result.tokens_trained += counts["tokens"]
    return result


class ReLIFT(Method):
    """ReLIFT-style: GRPO every epoch; all-fail prompts are buffered with their references
    and one SFT step is taken on the buffer whenever it fills (``run_relift_phase``)."""

    name = "relift"
    runs_sft = False

    def __init__(self, cfg: ScheduleConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        self.buffer = ReliftBuffer(cfg.relift_buffer)

    def phases(self, epoch: int, view: RunView | None = None) -> list[str]:
        return ["relift"]

    def run_phase(self, phase: str, ctx: PhaseContext) -> PhaseResult:
        if phase != "relift":
            return super().run_phase(phase, ctx)
        cfg = ctx.cfg
        return run_relift_phase(
            ctx.policy,
            grpo_questions(ctx),
            cfg.grpo,
            cfg.sft,
            ctx.rewards,
            ctx.optimizers,
            self.buffer,
            ctx.rng,
            ctx.seed,
            cfg.data.max_length,
            cfg.data.system_prompt,
            ctx.desc,
            pass_rates=ctx.pass_rates,
        )

    def state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.buffer.restore(state.get("buffer", {}))
