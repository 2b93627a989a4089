"""Where a GRPO phase's questions come from (``grpo.question_source``).

``train``: the train split (and ``grpo.fresh_questions`` orders it, ``asrl.phases.selection``).
``generator``: new questions of the synthetic data generator (``asrl.data.synthetic``, the mix
of ``data.generate``); ``reasoning_gym:TASK``: new items of that task. Both on a seed stream
of the phase's own, so every phase gets questions no phase has seen and a resumed run draws
the same ones. A procedural question whose text is one of the dataset's (any split: the
held-out questions stay held out, and the train questions are not new) is skipped; the
reward the phase raises is then on questions no SFT phase can have shown.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from asrl.config import GRPOConfig, ReasoningGymConfig
from asrl.data.format import ThinkingFormat
from asrl.data.records import parse_record
from asrl.data.synthetic import generate_records
from asrl.errors import ConfigError
from asrl.types import Example

TRIES = 20  # batches of candidates drawn before giving up on finding enough new questions


def questions_needed(cfg: GRPOConfig) -> int:
    """The most questions a phase can sample: every round's draws, resampling included."""
    draws = 1 + (cfg.max_resample_rounds if cfg.filter_zero_std else 0)
    return cfg.questions_per_epoch * draws * cfg.rounds_per_phase


def procedural_questions(
    source: str,
    n: int,
    seed: int,
    fmt: ThinkingFormat,
    mix: str,
    gym: ReasoningGymConfig,
    known: Iterable[Iterable[Example]],
) -> list[Example]:
    """``n`` new questions from ``source`` (``generator`` or ``reasoning_gym:TASK``) on the
    stream ``seed``, none with the text of a question in ``known`` (lists of examples: the
    dataset's splits), no two alike."""
    seen = {ex.prompt_text for split in known for ex in split}
    out: list[Example] = []
    start = 0
    for _ in range(TRIES):
        for ex in _candidates(source, n, start, seed, fmt, mix, gym):
            if ex.prompt_text not in seen:
                seen.add(ex.prompt_text)
                out.append(ex)
                if len(out) == n:
                    return out
        start += n
    if not out:
        raise ConfigError(
            f"grpo.question_source: {source} made no question the dataset does not already "
            f"hold in {TRIES * n} tries; use grpo.question_source=train"
        )
    return out  # fewer than asked: the generator's question space is nearly exhausted


def _candidates(
    source: str,
    n: int,
    start: int,
    seed: int,
    fmt: ThinkingFormat,
    mix: str,
    gym: ReasoningGymConfig,
) -> list[Example]:
    if source == "generator":
        return [
            parse_record(r) for r in generate_records(n, seed=seed, fmt=fmt, mix=mix, start=start)
        ]
    if source.startswith("reasoning_gym:"):
        from asrl.data.gym import ReasoningGymSource  # reasoning-gym is an optional extra

        task = source.split(":", 1)[1]
        src = ReasoningGymSource(task, seed=seed, size=gym.size, options=gym.options, fmt=fmt)
        src.restore({src.cursor: start})
        src.limit = start + n  # items start .. start + n - 1
        # a generator bug on one item quarantines it in a data source; here it is skipped
        return [raw.parse() for raw in src.poll() if raw.error is None]
    raise ConfigError(f"grpo.question_source: unknown source {source!r}")


def phase_seed(seed: int) -> int:
    """The questions' seed stream of a phase whose rollout seed is ``seed``."""
    return random.Random(f"{seed}:grpo-questions").getrandbits(31)
