"""Atomic checkpoints: written to a temporary directory, then renamed; the last K kept.

A checkpoint holds the LoRA adapter (safetensors, via PEFT), both optimizers' states, RNG
states, the epoch reached, the data cursors and the metrics so far. Loading uses
``weights_only=True``: nothing is unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from asrl.models import Policy


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain containers only, so ``weights_only=True`` loads them."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    root: str | Path,
    name: str,
    policy: Policy,
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.tmp"
    # a run killed mid-save leaves its temp dir behind (never read: latest_checkpoint skips
    # dot-prefixed names); clear every such leftover, not only this epoch's
    for stale in root.glob(".*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    policy.model.save_pretrained(tmp, safe_serialization=True)
    torch.save({k: o.state_dict() for k, o in optimizers.items()}, tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    checkpoints = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in checkpoints[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    root = Path(root)
    if not root.is_dir():
        return None
    # state.json is written last, so a directory without it is incomplete; temp dirs start
    # with a dot and are never chosen
    done = sorted(p for p in root.iterdir() if (p / "state.json").is_file() and p.name[0] != ".")
    return done[-1] if done else None


def load_checkpoint(
    path: str | Path, policy: Policy, optimizers: dict[str, torch.optim.Optimizer]
) -> dict[str, Any]:
    path = Path(path)
    weights = load_file(path / "adapter_model.safetensors", device=str(policy.device))
    set_peft_model_state_dict(policy.model, weights)
    opt_states = torch.load(path / "optimizer.pt", weights_only=True)
    for k, o in optimizers.items():
        if k in opt_states:
            o.load_state_dict(opt_states[k])
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())
