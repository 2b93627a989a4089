"""Rewards, following TRL's contract ``f(prompts, completions, **columns) -> list[float | None]``.

Columns passed to every function: ``answer`` (ground truth), ``reference`` (the dataset's
response), ``type`` and ``id``. ``None`` means "no opinion" and is left out of the weighted sum
(TRL does the same with NaN). Each component is reported separately.

The paper's reward is ``0.15 * format + 0.85 * correctness``:
* format: +1 when the thinking format is right, -1 otherwise;
* correctness: 1 exact, 0.5 contained, -0.5 otherwise.
Our refinement: correctness is judged on the *final answer* (text after the thinking block),
not on the whole response, so an answer quoted inside [LOGIC] does not count; "contained"
matches whole tokens, so ground truth "4" is not found in "42". Records whose reference has
no thinking block (the paper's "some without thinking") are rewarded for *not* using one.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from asrl.config import ConfigError, RewardConfig
from asrl.data.format import ThinkingFormat
from asrl.types import Example

RewardFn = Callable[..., list[float | None]]


def normalize_answer(text: str) -> str:
    """Lower-case, trim, drop trailing punctuation and markdown emphasis; canonical numbers."""
    t = re.sub(r"\s+", " ", text.lower())
    t = t.strip("*`_ ").rstrip(".!").strip("*`_ ")
    try:
        value = float(t.replace(",", ""))
        if math.isfinite(value):
            return f"{value:.10g}"
    except ValueError:
        pass
    return t


def correctness_score(final_answer: str, truth: str) -> float:
    """1.0 exact, 0.5 when the truth appears as a whole token, -0.5 otherwise."""
    got, want = normalize_answer(final_answer), normalize_answer(truth)
    if not want:
        return -0.5
    if got == want:
        return 1.0
    pattern = r"(?<![\w.])" + re.escape(want) + r"(?![\w]|\.\d)"
    if re.search(pattern, got) or re.search(pattern, final_answer.lower()):
        return 0.5
    return -0.5


def format_ok(completion: str, reference: str, fmt: ThinkingFormat) -> bool:
    """Well-formed thinking when the reference thinks; no thinking block when it does not."""
    if fmt.has_thinking(reference):
        return fmt.is_well_formed(completion)
    return not fmt.has_thinking(completion) and not any(s.open in completion for s in fmt.sections)


def make_format_reward(fmt: ThinkingFormat) -> RewardFn:
    def format_reward(prompts, completions, reference, **_):
        return [1.0 if format_ok(c, r, fmt) else -1.0 for c, r in zip(completions, reference)]

    return format_reward


def make_correctness_reward(fmt: ThinkingFormat) -> RewardFn:
    def correctness_reward(prompts, completions, answer, reference, **_):
        out: list[float | None] = []
        for c, a, r in zip(completions, answer, reference):
            truth = a if a is not None else fmt.final_answer(r)
            out.append(correctness_score(fmt.final_answer(c), truth))
        return out

    return correctness_reward


def import_reward(path: str) -> RewardFn:
    """Load ``"package.module:function"``; the message says what went wrong."""
    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward.custom: cannot import '{path}': {e}") from e
    if not callable(fn):
        raise ConfigError(f"reward.custom: '{path}' is not callable")
    return fn


@dataclass
class WeightedReward:
    name: str
    fn: RewardFn
    weight: float


class RewardSet:
    """A weighted sum of reward functions; ``score`` returns totals and per-function values."""

    def __init__(self, parts: list[WeightedReward]) -> None:
        self.parts = parts

    @classmethod
    def from_config(cls, cfg: RewardConfig, fmt: ThinkingFormat) -> RewardSet:
        parts = [
            WeightedReward("format", make_format_reward(fmt), cfg.format_weight),
            WeightedReward("correctness", make_correctness_reward(fmt), cfg.correctness_weight),
        ]
        for c in cfg.custom:
            fn = import_reward(c.path)
            parts.append(WeightedReward(getattr(fn, "__name__", c.path), fn, c.weight))
        return cls([p for p in parts if p.weight != 0])

    def score(
        self, examples: list[Example], completions: list[str]
    ) -> tuple[list[float], dict[str, list[float | None]]]:
        columns = {
            "answer": [e.answer for e in examples],
            "reference": [e.response for e in examples],
            "type": [e.type for e in examples],
            "id": [e.id for e in examples],
        }
        prompts = [e.prompt_text for e in examples]
        components: dict[str, list[float | None]] = {}
        totals = [0.0] * len(completions)
        for part in self.parts:
            values = part.fn(prompts=prompts, completions=completions, **columns)
            if len(values) != len(completions):
                raise ValueError(
                    f"reward '{part.name}' returned {len(values)} values for "
                    f"{len(completions)} completions"
                )
            components[part.name] = values
            for i, v in enumerate(values):
                if v is not None:
                    totals[i] += part.weight * float(v)
        return totals, components
