"""Small records passed between stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One training record, normalised from any accepted input convention.

    ``messages`` is the conversation before the reply to learn (chat roles), ``response`` the
    reply, ``answer`` the ground truth the correctness reward compares with (defaults to the
    response's final answer).
    """

    id: str
    messages: tuple[dict[str, str], ...]
    response: str
    answer: str | None = None
    type: str = "default"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt_text(self) -> str:
        """The last user turn, as reward functions receive it (TRL's ``prompts``)."""
        for m in reversed(self.messages):
            if m["role"] == "user":
                return m["content"]
        return ""


@dataclass
class Rollout:
    """Completions sampled for a batch of prompts, with their rewards.

    Tensors are laid out group by group: completions of prompt i are rows i*G .. i*G+G-1.
    """

    examples: list[Example]  # one per completion (prompt repeated G times)
    completions: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    rewards: list[float]  # combined reward per completion
    components: dict[str, list[float | None]]  # per reward function, unweighted
    tokens_generated: int = 0
    seconds: float = 0.0  # the whole rollout: weight sync, decoding, scoring
    sync_seconds: float = 0.0  # of which: loading the policy's weights into the engine


@dataclass
class PhaseResult:
    """What a phase reports to the loop: metrics for metrics.jsonl plus the compute ledger."""

    phase: str
    metrics: dict[str, float] = field(default_factory=dict)
    examples_seen: int = 0
    tokens_trained: int = 0
    tokens_generated: int = 0
    seconds: float = 0.0
    steps: int = 0
    # a few completions for a human to read (samples.jsonl, the trackers' text)
    samples: list[dict[str, Any]] = field(default_factory=list)
    # ids of the records the phase trained on with their references (an SFT phase's)
    record_ids: list[str] = field(default_factory=list)
