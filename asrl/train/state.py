"""Small pieces of run state and naming: seeds derived per use, early stopping (which saves
and restores itself), the test split's metric names."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: Any) -> int:
    """A seed from (seed, epoch, phase, ...): reproducible and independent per use."""
    return random.Random(":".join(map(str, parts))).getrandbits(31)


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs in a row where no eval (after either phase) improved."""

    metric: str
    mode: str
    patience: int
    best: float | None = None
    bad_epochs: int = 0
    improved_this_epoch: bool = False

    def observe(self, value: float | None) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        better = self.best is None or (
            value < self.best if self.mode == "min" else value > self.best
        )
        if better:
            self.best = value
            self.improved_this_epoch = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "improved": self.improved_this_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.improved_this_epoch = state.get("improved", False)

    def end_epoch(self) -> bool:
        """Close the epoch; True when training should stop."""
        self.bad_epochs = 0 if self.improved_this_epoch else self.bad_epochs + 1
        self.improved_this_epoch = False
        return self.bad_epochs >= self.patience


def test_key(key: str) -> str:
    """An eval metric's name for the test split: ``eval/correctness`` -> ``test/correctness``
    (``eval/val_loss`` -> ``test/val_loss``: the same loss, on test), ``time/eval_s`` ->
    ``time/test_s``."""
    if key == "time/eval_s":
        return "time/test_s"
    return "test/" + key.removeprefix("eval/")
