"""ARES-style whole stages: GRPO for ``schedule.stage_epochs`` epochs, then SFT for as many,
repeat."""

from __future__ import annotations

from asrl.methods.base import Method, RunView


class ARES(Method):
    name = "ares"

    def phases(self, epoch: int, view: RunView | None = None) -> list[str]:
        stage = (epoch - 1) // self.cfg.stage_epochs
        return ["grpo"] if stage % 2 == 0 else ["sft"]
