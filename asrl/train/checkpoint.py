"""Atomic checkpoints: written to a temporary directory, then renamed; the last K kept.

A checkpoint holds the LoRA adapter (safetensors, via PEFT), both optimizers' states, RNG
states, the epoch reached, the data cursors and the metrics so far. Loading uses
``weights_only=True``: nothing is unpickled beyond tensors and plain containers.

A sharded (FSDP) run writes the same files: every process gathers the adapter and the
optimizer states (``gather_full``, a collective), the main process writes them; on resume
each process reads them and keeps its own shard. So a sharded run's checkpoint loads in a
1-process run (and ``asrl export``), and the other way round.
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

from asrl.model.loading import Policy
from asrl.parallel import distributed


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


def gather_full(
    policy: Policy, optimizers: dict[str, torch.optim.Optimizer]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A sharded policy's whole adapter (model parameter names) and optimizer states (in
    ``Optimizer.state_dict`` form). Every process must call it, in the same order."""
    adapter = {
        name: distributed.full_tensor(p.detach())
        for name, p in policy.model.named_parameters()
        if p.requires_grad
    }
    states = {}
    for key, opt in optimizers.items():
        sd = opt.state_dict()
        sd["state"] = {
            i: {k: distributed.full_tensor(v) for k, v in st.items()}
            for i, st in sd["state"].items()
        }
        states[key] = sd
    return adapter, states


def save_checkpoint(
    root: str | Path,
    name: str,
    policy: Policy,
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    keep_last: int = 2,
    full: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoint ``name`` under ``root`` atomically; keep the last ``keep_last``.

    ``full``: what :func:`gather_full` returned, for a sharded policy.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.tmp"
    # a run killed mid-save leaves its temp dir behind (never read: latest_checkpoint skips
    # dot-prefixed names); clear every such leftover, not only this epoch's
    for stale in root.glob(".*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    if full is None:
        policy.model.save_pretrained(tmp, safe_serialization=True)
        torch.save({k: o.state_dict() for k, o in optimizers.items()}, tmp / "optimizer.pt")
    else:  # PEFT picks the adapter's tensors out of the state dict and names them as usual
        policy.model.save_pretrained(tmp, safe_serialization=True, state_dict=full[0])
        torch.save(full[1], tmp / "optimizer.pt")
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
    if policy.sharded:
        _load_sharded_adapter(policy, weights)
    else:
        set_peft_model_state_dict(policy.model, weights)
    opt_states = torch.load(path / "optimizer.pt", weights_only=True)
    for k, o in optimizers.items():
        if k in opt_states:
            o.load_state_dict(_shard_like(o, opt_states[k]) if policy.sharded else opt_states[k])
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())


def _local_shard(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as the sharded parameter ``like`` (no communication: every process
    read the same file and keeps its own part)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def _load_sharded_adapter(policy: Policy, weights: dict[str, torch.Tensor]) -> None:
    """``set_peft_model_state_dict`` for a sharded model: PEFT saves each LoRA parameter
    under its name without the adapter's (``.default``)."""
    adapter = f".{policy.model.active_adapter}"
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if p.requires_grad:
                key = name.replace(adapter, "")
                if key not in weights:
                    raise KeyError(f"checkpoint: the adapter has no {key}")
                p.copy_(_local_shard(weights[key].to(p.dtype), p))


def _shard_like(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
    """A whole optimizer state dict with each parameter-shaped tensor sharded like its
    parameter (indices follow the parameters' order across groups, as in ``state_dict``)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    state = {}
    for i, st in sd["state"].items():
        p = params[int(i)]
        state[i] = {
            k: _local_shard(v, p) if torch.is_tensor(v) and v.shape == p.shape else v
            for k, v in st.items()
        }
    return {**sd, "state": state}
