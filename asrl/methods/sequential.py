"""Sequential: SFT for ``schedule.sft_epochs`` epochs, then GRPO only. Data arriving after the
switch is never imitated (it only reaches the model as GRPO prompts)."""

from __future__ import annotations

from asrl.methods.base import Method, RunView


class Sequential(Method):
    name = "sequential"

    @property
    def runs_sft(self) -> bool:  # type: ignore[override]
        return self.cfg.sft_epochs > 0

    def phases(self, epoch: int, view: RunView | None = None) -> list[str]:
        return ["sft"] if epoch <= self.cfg.sft_epochs else ["grpo"]
