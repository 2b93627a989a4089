"""SFT only: one SFT phase per epoch (the supervised baseline)."""

from __future__ import annotations

from asrl.methods.base import Method, RunView


class SFTOnly(Method):
    name = "sft"
    runs_grpo = False

    def phases(self, epoch: int, view: RunView | None = None) -> list[str]:
        return ["sft"]
