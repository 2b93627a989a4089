"""SASR-style adaptive switching between SFT and GRPO phases, from a measured signal."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from asrl.config import ScheduleConfig
from asrl.methods.base import Method, RunView
from asrl.types import PhaseResult


class Adaptive(Method):
    """SASR-style adaptive switching. SASR has no public code: this is our reading of it.

    (Phases are decided lazily from measured signals, so checkpoints are taken at epoch ends.)

    * Epoch 1 (warm-up): one SFT phase; g_warm = its ``train/sft_grad_norm`` (the mean
      pre-clip gradient norm over the phase's steps).
    * Every later epoch runs ``adaptive_slots`` phases. Before each slot:
      - signal ``grad_norm`` (default): g_t = the latest measured SFT gradient norm: the
        previous slot's ``train/sft_grad_norm`` if that slot was SFT, otherwise a probe
        (one SFT batch of ``sft.batch_size`` train examples, forward + backward, no step;
        ````RunView.probe_sft_grad_norm``). p = clip(g_t / g_warm, p_min, 1): a high norm means
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

    def phases(self, epoch: int, view: RunView | None = None) -> Iterator[str]:
        if epoch == 1 or self.g_warm is None:
            yield "sft"
            return
        for slot in range(self.cfg.adaptive_slots):
            signal = self._signal(epoch, slot, view)
            p = min(max(signal, self.cfg.adaptive_p_min), 1.0)
            rng = random.Random(f"{self.seed}:{epoch}:{slot}:adaptive")
            choice = "sft" if rng.random() < p else "grpo"
            if view is not None:
                view.metrics.log(
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

    def _signal(self, epoch: int, slot: int, view: RunView | None) -> float:
        if self.cfg.adaptive_signal == "format_accuracy":
            evals = view.metrics.evals() if view is not None else []
            fa = evals[-1].get("eval/format_accuracy") if evals else None
            return 1.0 - fa if fa is not None and fa == fa else 1.0
        g = self.last_sft_norm
        if g is None and view is not None:
            g = view.probe_sft_grad_norm(epoch, slot)
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
