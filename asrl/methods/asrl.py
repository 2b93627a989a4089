"""ASRL, the paper's method: an SFT phase then a GRPO phase inside every epoch, so data that
arrives while training runs reaches the model at the next SFT phase."""

from __future__ import annotations

from asrl.methods.base import Method, RunView


class ASRL(Method):
    name = "asrl"

    def phases(self, epoch: int, view: RunView | None = None) -> list[str]:
        return ["sft", "grpo"]
