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

``reward.correctness: math_verify`` compares math answers by value with math-verify (1/2 =
0.5 = \\frac{1}{2}, 2x+1 = 1+2x). Records from a reasoning-gym source carry their task's item
(column ``reasoning_gym``) and are scored by that task's own ``score_answer`` (0..1) instead.
Columns beyond the four above (a Hugging Face dataset's other columns, ``reasoning_gym``)
are passed to every function too, as TRL passes every dataset column.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import numbers
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asrl.config import ConfigError, RewardConfig
from asrl.data.format import ThinkingFormat
from asrl.data.gym import score_entry
from asrl.errors import PartialRewardError, RewardError
from asrl.types import Example

RewardFn = Callable[..., list[float | None]]
log = logging.getLogger(__name__)


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


def require_math_verify() -> None:
    """Fail early, with the install command, when math-verify is missing."""
    try:
        import math_verify  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            "reward.correctness: math_verify needs the math-verify package: "
            "pip install 'asrl[math]' (or pip install math-verify)"
        ) from e


_MATH_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")  # a word, not a LaTeX command (\frac)


def _timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may set
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def math_parse(text: str) -> tuple[Any, ...]:
    """math-verify's reading of an answer (empty when it finds no math).

    A bare expression with no word in it (``2x+1``, ``1/2``) is read as LaTeX: math-verify's
    plain-text reader would take only its first number (``2``), and call 2 and 2x+1 equal.
    Prose (``The answer is 42``) and delimited math (``$x$``, ``\\boxed{4}``) are read as
    they are.
    """
    from math_verify import parse

    text = text.strip()
    if not text:
        return ()
    if not any(d in text for d in _MATH_DELIMITERS) and not _WORD.search(text):
        found = parse(f"${text}$", parsing_timeout=_timeout())
        if found:
            return tuple(found)
    return tuple(parse(text, parsing_timeout=_timeout()))


def math_verify_score(final_answer: str, truth: str) -> float:
    """1.0 when math-verify finds the final answer equal to the truth by value (``0.5`` for
    ``1/2``, ``1+2x`` for ``2x+1``); otherwise :func:`correctness_score`, which also covers
    answers that are not math at all (a name, yes/no) or that math-verify cannot parse."""
    from math_verify import verify

    try:
        gold, got = math_parse(truth), math_parse(final_answer)
        if gold and got and verify(list(gold), list(got), timeout_seconds=_timeout()):
            return 1.0
    except Exception as e:  # sympy can fail in many ways on odd input: compare as text
        log.debug("math-verify failed on %r vs %r: %s", final_answer, truth, e)
    return correctness_score(final_answer, truth)


CORRECTNESS: dict[str, Callable[[str, str], float]] = {
    "contained": correctness_score,
    "math_verify": math_verify_score,
}


def format_ok(completion: str, reference: str, fmt: ThinkingFormat) -> bool:
    """Well-formed thinking when the reference thinks; no thinking block when it does not."""
    if fmt.has_thinking(reference):
        return fmt.is_well_formed(completion)
    return not fmt.has_thinking(completion) and not any(s.open in completion for s in fmt.sections)


def make_format_reward(fmt: ThinkingFormat) -> RewardFn:
    def format_reward(prompts, completions, reference, **_):
        return [1.0 if format_ok(c, r, fmt) else -1.0 for c, r in zip(completions, reference)]

    return format_reward


def make_correctness_reward(fmt: ThinkingFormat, mode: str = "contained") -> RewardFn:
    """Correctness of the final answer: by ``mode`` (a key of :data:`CORRECTNESS`), or by the
    task's own scorer for records that carry a reasoning-gym item."""
    compare = CORRECTNESS[mode]

    def correctness_reward(prompts, completions, answer, reference, reasoning_gym=None, **_):
        gym = reasoning_gym or [None] * len(completions)
        out: list[float | None] = []
        for c, a, r, g in zip(completions, answer, reference, gym):
            final = fmt.final_answer(c)
            if g is not None:
                out.append(score_entry(final, g))
                continue
            truth = a if a is not None else fmt.final_answer(r)
            out.append(compare(final, truth))
        return out

    return correctness_reward


def make_reasoning_gym_reward(fmt: ThinkingFormat) -> RewardFn:
    """The reasoning-gym scorer alone (None for records without a reasoning-gym item)."""

    def reasoning_gym_correctness(prompts, completions, reasoning_gym=None, **_):
        gym = reasoning_gym or [None] * len(completions)
        return [
            None if g is None else score_entry(fmt.final_answer(c), g)
            for c, g in zip(completions, gym)
        ]

    return reasoning_gym_correctness


# For ``reward.custom`` or TRL, with the paper's tags: "asrl.rewards:reasoning_gym_correctness"
reasoning_gym_correctness = make_reasoning_gym_reward(ThinkingFormat())


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

    def __init__(
        self,
        parts: list[WeightedReward],
        on_error: str = "stop",
        max_errors: int = 10,
        correctness: RewardFn | None = None,
    ) -> None:
        self.parts = parts
        self.on_error = on_error
        self.max_errors = max_errors
        self.errors = 0  # failed calls so far in this process (on_error: skip)
        # the correctness function evaluation counts hits with (even at weight 0)
        self.correctness = correctness

    @classmethod
    def from_config(cls, cfg: RewardConfig, fmt: ThinkingFormat) -> RewardSet:
        correctness = make_correctness_reward(fmt, cfg.correctness)
        parts = [
            WeightedReward("format", make_format_reward(fmt), cfg.format_weight),
            WeightedReward("correctness", correctness, cfg.correctness_weight),
        ]
        for c in cfg.custom:
            fn = import_reward(c.path)
            parts.append(WeightedReward(getattr(fn, "__name__", c.path), fn, c.weight))
        if cfg.judge.weight != 0:
            from asrl.rewards.judge import JudgeReward  # late import: only runs that use a judge

            judge = JudgeReward(cfg.judge, fmt)
            if cfg.judge.probe:
                judge.probe()  # fails here, naming the URL, before any training work
            parts.append(WeightedReward("judge", judge, cfg.judge.weight))
        keep = [p for p in parts if p.weight != 0]
        return cls(keep, cfg.on_error, cfg.max_errors, correctness)

    @staticmethod
    def columns(examples: list[Example]) -> dict[str, list[Any]]:
        """Keyword arguments for reward functions: our four columns, then every other column
        any example carries (None where one does not), as TRL passes dataset columns."""
        columns: dict[str, list[Any]] = {
            "answer": [e.answer for e in examples],
            "reference": [e.response for e in examples],
            "type": [e.type for e in examples],
            "id": [e.id for e in examples],
        }
        reserved = {*columns, "prompts", "completions"}
        extra = sorted({k for e in examples for k in e.extra} - reserved)
        for key in extra:
            columns[key] = [e.extra.get(key) for e in examples]
        return columns

    def score(
        self, examples: list[Example], completions: list[str]
    ) -> tuple[list[float], dict[str, list[float | None]]]:
        columns = self.columns(examples)
        prompts = [e.prompt_text for e in examples]
        components: dict[str, list[float | None]] = {}
        totals = [0.0] * len(completions)
        for part in self.parts:
            try:
                fn_values = part.fn(prompts=prompts, completions=completions, **columns)
                values = _checked(fn_values, len(completions))
            except Exception as e:
                values = self._failed(part, e, examples)
            components[part.name] = values
            for i, v in enumerate(values):
                if v is not None:
                    totals[i] += part.weight * v
        return totals, components

    def _failed(
        self, part: WeightedReward, err: Exception, examples: list[Example]
    ) -> list[float | None]:
        """Stop with a message naming the function and the batch, or record None for it."""
        first = examples[0] if examples else None
        where = (
            f"on a batch of {len(examples)} (first example id {first.id!r}, prompt "
            f"{first.prompt_text[:80]!r})"
            if first
            else "on an empty batch"
        )
        msg = f"reward function '{part.name}' failed {where}: {type(err).__name__}: {err}"
        if self.on_error == "stop":
            raise RewardError(f"{msg}. Fix it, or set reward.on_error: skip") from err
        self.errors += 1
        if self.errors > self.max_errors:
            raise RewardError(
                f"{msg}. That is {self.errors} reward errors in this run, over "
                f"reward.max_errors={self.max_errors}; fix the function"
            ) from err
        if isinstance(err, PartialRewardError):
            try:  # keep what it did score; None where it failed
                values = _checked(err.values, len(examples))
            except (TypeError, ValueError):
                values = [None] * len(examples)
            missing = sum(v is None for v in values)
            log.warning(
                "%s; None for %d of its %d values (reward.on_error: skip)",
                msg,
                missing,
                len(values),
            )
            return values
        log.warning("%s; its values are None for this batch (reward.on_error: skip)", msg)
        return [None] * len(examples)


def _checked(values: object, n: int) -> list[float | None]:
    """The function's values as floats or None; anything else is an error, never a 0."""
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"returned {type(values).__name__}, not a list")
    if len(values) != n:
        raise ValueError(f"returned {len(values)} values for {n} completions")
    out: list[float | None] = []
    for v in values:
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
            raise TypeError(f"returned a {type(v).__name__} value {v!r}, not a number or None")
        out.append(None if v is None else float(v))
    return out
