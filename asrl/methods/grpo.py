"""GRPO only, from the untrained model (the paper's cold start)."""

from __future__ import annotations

from asrl.methods.base import Method, RunView


class GRPOOnly(Method):
    name = "grpo"
    runs_sft = False

    def phases(self, epoch: int, view: RunView | None = None) -> list[str]:
        return ["grpo"]
