"""Which train questions a GRPO round samples: uniformly, or weighted by each record's recent
pass rate (``grpo.question_selection: pass_rate``), kept in checkpoints by :class:`PassRates`;
with ``grpo.fresh_questions``, records no SFT phase has trained on first, then the least
recently trained (:class:`SFTHistory`, also kept in checkpoints)."""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from asrl.config import GRPOConfig
from asrl.types import Example, Rollout


def group_pass_fractions(
    scores: Sequence[float | None], group_size: int, threshold: float
) -> list[float | None]:
    """Per group: the fraction of its scored completions with score >= ``threshold``
    (None for a group with no score at all)."""
    out: list[float | None] = []
    for g in range(0, len(scores), group_size):
        got = [s for s in scores[g : g + group_size] if s is not None and not math.isnan(s)]
        out.append(sum(s >= threshold for s in got) / len(got) if got else None)
    return out


@dataclass
class PassRates:
    """Each train record's recent GRPO pass rate, keyed by record id.

    ``observe`` folds in a round: p <- (1 - alpha) p + alpha * f, f = the fraction of the
    record's group that passed (``group_pass_fractions`` of the correctness component, or
    of the total reward when no correctness function is configured); the first observation
    sets p = f. Run state: saved in checkpoints (``state``/``restore``); a record added
    later simply has no entry yet.
    """

    rates: dict[str, float] = field(default_factory=dict)

    def get(self, record_id: str) -> float | None:
        return self.rates.get(record_id)

    def observe(self, ro: Rollout, group_size: int, threshold: float, alpha: float) -> None:
        scores = ro.components.get("correctness")
        if scores is None:
            scores = ro.rewards
        fracs = group_pass_fractions(scores, group_size, threshold)
        for g, f in enumerate(fracs):
            if f is None:
                continue
            rid = ro.examples[g * group_size].id
            old = self.rates.get(rid)
            self.rates[rid] = f if old is None else (1.0 - alpha) * old + alpha * f

    def state(self) -> dict[str, Any]:
        return {"rates": dict(self.rates)}

    def restore(self, state: dict[str, Any]) -> None:
        self.rates = {str(k): float(v) for k, v in state.get("rates", {}).items()}


@dataclass
class SFTHistory:
    """The epoch each train record was last trained on by an SFT phase, keyed by record id.

    Run state, saved in checkpoints; a record no SFT phase has trained on has no entry.
    """

    last: dict[str, int] = field(default_factory=dict)

    def mark(self, record_ids: Iterable[str], epoch: int) -> None:
        for rid in record_ids:
            self.last[rid] = epoch

    def get(self, record_id: str) -> int | None:
        return self.last.get(record_id)

    def tiers(self, ids: Sequence[str]) -> list[list[int]]:
        """Positions of ``ids`` grouped by when they were last trained, in order: never,
        then the oldest epoch first; within a tier in the order of ``ids``."""
        by: dict[int, list[int]] = {}
        for j, rid in enumerate(ids):
            last = self.last.get(rid)
            by.setdefault(-1 if last is None else last, []).append(j)
        return [by[key] for key in sorted(by)]

    def state(self) -> dict[str, Any]:
        return {"last": dict(self.last)}

    def restore(self, state: dict[str, Any]) -> None:
        self.last = {str(k): int(v) for k, v in state.get("last", {}).items()}


def selection_weight(p: float | None, floor: float) -> float:
    """p (1 - p) + floor: records solved sometimes (informative groups) weigh most; a
    record never seen counts as p = 0.5 (the largest weight: new data is explored first)."""
    p = 0.5 if p is None else p
    return p * (1.0 - p) + floor


def choose_questions(
    train: Sequence[Example],
    k: int,
    rng: random.Random,
    cfg: GRPOConfig,
    rates: PassRates,
    exclude: Collection[int] = (),
    history: SFTHistory | None = None,
) -> list[int]:
    """Indices of ``k`` distinct train records, none in ``exclude``; deterministic given rng.

    With ``cfg.fresh_questions`` and a ``history``, the records are taken tier by tier: those
    no SFT phase trained on, then those last trained longest ago, ...; within a tier, and
    without a history (or with every record in one tier, as after an SFT phase over the whole
    split), by ``question_selection``: uniform: ``rng.sample``; pass_rate: weighted sampling
    without replacement (Efraimidis-Spirakis: the k largest log(u) / w, u uniform) with
    w = ``selection_weight``.
    """
    pool = (
        [i for i in range(len(train)) if i not in exclude] if exclude else list(range(len(train)))
    )
    k = min(k, len(pool))
    if k <= 0:
        return []
    if not cfg.fresh_questions or history is None:
        return _draw(train, pool, k, rng, cfg, rates)
    out: list[int] = []
    for tier in history.tiers([train[i].id for i in pool]):
        out += _draw(train, [pool[j] for j in tier], k - len(out), rng, cfg, rates)
        if len(out) == k:
            break
    return out


def least_recently_trained(
    ids: Sequence[str], k: int, rng: random.Random, history: SFTHistory
) -> list[int]:
    """Indices of ``k`` of ``ids``: those no SFT phase trained on first, then the least
    recently trained, at random within each tier (``sft.unseen_first``). With every id in one
    tier this is ``rng.sample(range(len(ids)), k)``."""
    out: list[int] = []
    for tier in history.tiers(ids):
        out += rng.sample(tier, min(k - len(out), len(tier)))
        if len(out) == k:
            break
    return out


def _draw(
    train: Sequence[Example],
    pool: list[int],
    k: int,
    rng: random.Random,
    cfg: GRPOConfig,
    rates: PassRates,
) -> list[int]:
    """``min(k, len(pool))`` of ``pool`` by ``cfg.question_selection``."""
    k = min(k, len(pool))
    if cfg.question_selection == "uniform":
        return rng.sample(pool, k)
    keys = []
    for i in pool:
        w = selection_weight(rates.get(train[i].id), cfg.pass_rate_floor)
        u = rng.random()
        keys.append((math.log(u) / w if u > 0 else -math.inf, -i))
    keys.sort(reverse=True)
    return [-j for _, j in keys[:k]]
