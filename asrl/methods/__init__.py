"""The methods, one file each, registered by name (``schedule.method``).

``asrl`` (the paper's), and the baselines and hybrids it is compared with: ``sft``,
``grpo``, ``sequential``, ``ares``, ``adaptive`` (SASR-style), ``chord``, ``relift``.
"""

from __future__ import annotations

from asrl.config import ScheduleConfig
from asrl.methods.adaptive import Adaptive
from asrl.methods.ares import ARES
from asrl.methods.asrl import ASRL
from asrl.methods.base import Method, PhaseContext, RunView
from asrl.methods.chord import Chord
from asrl.methods.grpo import GRPOOnly
from asrl.methods.relift import ReLIFT
from asrl.methods.sequential import Sequential
from asrl.methods.sft import SFTOnly

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (ASRL, SFTOnly, GRPOOnly, Sequential, ARES, Adaptive, Chord, ReLIFT)
}

__all__ = ["METHODS", "Method", "PhaseContext", "RunView", "make_method"]


def make_method(cfg: ScheduleConfig, seed: int = 0) -> Method:
    """The method ``cfg.method`` names (checked by ``asrl.preflight``)."""
    return METHODS[cfg.method](cfg, seed)
