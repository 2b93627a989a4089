"""Schedules decide which phases run in an epoch. Variants are objects, not loop flags.

``asrl`` is the paper's method: an SFT phase then a GRPO phase inside every epoch. The
others are the baselines and hybrids it is compared with. The loop asks
``phases(epoch, ctx)`` for the epoch's phase names (a generator may decide lazily, after
seeing earlier phases), reports each result to ``observe``, and checkpoints ``state()``.
``ctx`` is the loop's ``Run`` (only ``Adaptive`` uses it: metrics log, evals, SFT probe).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

from asrl.config import ScheduleConfig
from asrl.types import PhaseResult


class Schedule:
    """Base: a fixed list of phases every epoch, no state."""

    name = "base"
    # whether a run may resume in the middle of an epoch (its phase list can be replayed)
    resumable_mid_epoch = True
    # whether any epoch runs the "sft" phase: then the train split needs examples within
    # data.max_length tokens (the loop checks before the model works)
    runs_sft = True

    def __init__(self, cfg: ScheduleConfig, seed: int = 0) -> None:
        self.cfg, self.seed = cfg, seed

    def phases(self, epoch: int, ctx: Any = None) -> Iterable[str]:
        """Phase names (keys of asrl.phases.registry.PHASES) for ``epoch`` (from 1), in order."""
        raise NotImplementedError

    def observe(self, phase: str, result: PhaseResult) -> None:
        """Called after each phase with its result."""

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state the checkpoint keeps for resume."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass


class ASRL(Schedule):
    """SFT then GRPO, every epoch: new data reaches the model at the next SFT phase."""

    name = "asrl"

    def phases(self, epoch: int, ctx: Any = None) -> list[str]:
        return ["sft", "grpo"]


class SFTOnly(Schedule):
    name = "sft"

    def phases(self, epoch: int, ctx: Any = None) -> list[str]:
        return ["sft"]


class GRPOOnly(Schedule):
    """GRPO from the untrained model (the paper's cold start)."""

    name = "grpo"
    runs_sft = False

    def phases(self, epoch: int, ctx: Any = None) -> list[str]:
        return ["grpo"]


class Sequential(Schedule):
    """SFT for ``sft_epochs`` epochs, then GRPO only: data arriving after the switch is
    never imitated (it only reaches the model as GRPO prompts)."""

    name = "sequential"

    @property
    def runs_sft(self) -> bool:  # type: ignore[override]
        return self.cfg.sft_epochs > 0

    def phases(self, epoch: int, ctx: Any = None) -> list[str]:
        return ["sft"] if epoch <= self.cfg.sft_epochs else ["grpo"]


class ARES(Schedule):
    """ARES-style whole stages: GRPO for ``stage_epochs`` epochs, then SFT for as many, repeat."""

    name = "ares"

    def phases(self, epoch: int, ctx: Any = None) -> list[str]:
        stage = (epoch - 1) // self.cfg.stage_epochs
        return ["grpo"] if stage % 2 == 0 else ["sft"]


class Adaptive(Schedule):
    """SASR-style adaptive switching. SASR has no public code: this is our reading of it.

    (Phases are decided lazily from measured signals, so checkpoints are taken at epoch ends.)

    * Epoch 1 (warm-up): one SFT phase; g_warm = its ``train/sft_grad_norm`` (the mean
      pre-clip gradient norm over the phase's steps).
    * Every later epoch runs ``adaptive_slots`` phases. Before each slot:
      - signal ``grad_norm`` (default): g_t = the latest measured SFT gradient norm: the
        previous slot's ``train/sft_grad_norm`` if that slot was SFT, otherwise a probe
        (one SFT batch of ``sft.batch_size`` train examples, forward + backward, no step;
        ``ctx.probe_sft_grad_norm``). p = clip(g_t / g_warm, p_min, 1): a high norm means
        the model is far from the demonstrations, so imitate more.
      - signal ``format_accuracy``: s = the latest held-out ``eval/format_accuracy``
        (the loop evaluates after every phase); p = clip(1 - s, p_min, 1).
      - SFT with probability p, else GRPO, drawn from Random((seed, epoch, slot)).
      - one metrics line with phase "schedule": ``schedule/signal``, ``schedule/p_sft``,
        ``schedule/choice``, ``schedule/slot``.
    Departures from SASR: SASR switches per optimizer step and also uses divergence from the
    initial distribution; we switch per phase (a slot is a whole SFT or GRPO phase) and use
    one signal. ``p_min`` keeps some SFT so the signal keeps being measured.
    """

    name = "adaptive"
    resumable_mid_epoch = False

    def __init__(self, cfg: ScheduleConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        self.g_warm: float | None = None
        self.last_sft_norm: float | None = None  # from the phase just run, if it was SFT

    def phases(self, epoch: int, ctx: Any = None) -> Iterator[str]:
        if epoch == 1 or self.g_warm is None:
            yield "sft"
            return
        for slot in range(self.cfg.adaptive_slots):
            signal = self._signal(epoch, slot, ctx)
            p = min(max(signal, self.cfg.adaptive_p_min), 1.0)
            rng = random.Random(f"{self.seed}:{epoch}:{slot}:adaptive")
            choice = "sft" if rng.random() < p else "grpo"
            if ctx is not None:
                ctx.metrics.log(
                    epoch,
                    "schedule",
                    {
                        "schedule/signal": signal,
                        "schedule/p_sft": p,
                        "schedule/choice": choice,
                        "schedule/slot": slot,
                    },
                )
            yield choice

    def _signal(self, epoch: int, slot: int, ctx: Any) -> float:
        if self.cfg.adaptive_signal == "format_accuracy":
            evals = ctx.metrics.evals() if ctx is not None else []
            fa = evals[-1].get("eval/format_accuracy") if evals else None
            return 1.0 - fa if fa is not None and fa == fa else 1.0
        g = self.last_sft_norm
        if g is None and ctx is not None:
            g = ctx.probe_sft_grad_norm(epoch, slot)
        if g is None or g != g or not self.g_warm:
            return 1.0
        return g / self.g_warm

    def observe(self, phase: str, result: PhaseResult) -> None:
        norm = result.metrics.get("train/sft_grad_norm") if phase == "sft" else None
        if norm is not None and self.g_warm is None:
            self.g_warm = norm
        self.last_sft_norm = norm

    def state(self) -> dict[str, Any]:
        return {"g_warm": self.g_warm, "last_sft_norm": self.last_sft_norm}

    def restore(self, state: dict[str, Any]) -> None:
        self.g_warm = state.get("g_warm")
        self.last_sft_norm = state.get("last_sft_norm")


class Chord(Schedule):
    """CHORD-style: one ``chord`` phase per epoch; each GRPO step blends in the SFT loss
    with weight mu (``asrl.phases.chord.chord_mu`` over the run's global GRPO step)."""

    name = "chord"
    runs_sft = False  # its SFT term skips over-length examples (one blended phase)

    def __init__(self, cfg: ScheduleConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        self.step = 0  # GRPO optimizer steps taken so far in the run

    def phases(self, epoch: int, ctx: Any = None) -> list[str]:
        return ["chord"]

    def observe(self, phase: str, result: PhaseResult) -> None:
        self.step += result.steps

    def state(self) -> dict[str, Any]:
        return {"step": self.step}

    def restore(self, state: dict[str, Any]) -> None:
        self.step = state.get("step", 0)


class ReLIFT(Schedule):
    """ReLIFT-style: GRPO every epoch; all-fail prompts are buffered with their references
    and one SFT step is taken on the buffer whenever it fills (``asrl.phases.relift``)."""

    name = "relift"
    runs_sft = False

    def __init__(self, cfg: ScheduleConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        from asrl.phases.relift import ReliftBuffer  # late: config validation imports us

        self.buffer = ReliftBuffer(cfg.relift_buffer)

    def phases(self, epoch: int, ctx: Any = None) -> list[str]:
        return ["relift"]

    def state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.buffer.restore(state.get("buffer", {}))


SCHEDULES: dict[str, type[Schedule]] = {
    s.name: s for s in (ASRL, SFTOnly, GRPOOnly, Sequential, ARES, Adaptive, Chord, ReLIFT)
}


def make_schedule(cfg: ScheduleConfig, seed: int = 0) -> Schedule:
    return SCHEDULES[cfg.method](cfg, seed)
