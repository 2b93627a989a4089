"""Schedules decide which phases run in an epoch. Variants are objects, not loop flags.

``asrl`` is the paper's method: an SFT phase then a GRPO phase inside every epoch. The
others are the baselines it is compared with (see README for what each reproduces).
"""

from __future__ import annotations

from typing import Protocol

from asrl.config import ScheduleConfig


class Schedule(Protocol):
    name: str

    def phases(self, epoch: int) -> list[str]:
        """Phase names ("sft", "grpo") to run in ``epoch`` (from 1), in order."""
        ...


class ASRL:
    """SFT then GRPO, every epoch: new data reaches the model at the next SFT phase."""

    name = "asrl"

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg

    def phases(self, epoch: int) -> list[str]:
        return ["sft", "grpo"]


class SFTOnly:
    name = "sft"

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg

    def phases(self, epoch: int) -> list[str]:
        return ["sft"]


class GRPOOnly:
    """GRPO from the untrained model (the paper's cold start)."""

    name = "grpo"

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg

    def phases(self, epoch: int) -> list[str]:
        return ["grpo"]


SCHEDULES: dict[str, type] = {s.name: s for s in (ASRL, SFTOnly, GRPOOnly)}


def make_schedule(cfg: ScheduleConfig) -> Schedule:
    return SCHEDULES[cfg.method](cfg)
