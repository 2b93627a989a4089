"""Starting a run from existing LoRA weights (``model.adapter``).

``model.adapter`` names one of:

* a run directory: its latest checkpoint, by the rule ``asrl export`` uses;
* one of its checkpoints, ``RUN/checkpoints/epoch-NNNN[.pK]``;
* an adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``), as
  ``asrl export RUN OUT`` writes it (or PEFT's ``save_pretrained``).

:func:`resolve_adapter` reads only small files (no model), so a wrong path or a mismatch
fails before the model loads; :func:`check_compatible` compares the adapter's LoRA shape
(rank, alpha, target modules) and, where it is recorded, its base model with this config;
:func:`load_adapter` copies the weights into the fresh LoRA that ``load_policy`` built.
Only weights are taken: the optimizers start fresh (a new run, not a resume).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrl.config import ConfigError, ModelConfig
from asrl.model.export import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    EXPORT_INFO,
    ExportError,
    find_checkpoint,
)

KEY = "model.adapter"
WHAT = (
    "give a run directory, one of its checkpoints (RUN/checkpoints/epoch-NNNN), or an "
    "adapter directory written by `asrl export RUN OUT`"
)


@dataclass
class StartAdapter:
    """Where a run's starting LoRA weights come from, and what they were trained as."""

    given: str  # model.adapter as written
    kind: str  # run | checkpoint | adapter
    weights_dir: Path  # holds adapter_model.safetensors + adapter_config.json
    adapter_config: dict[str, Any]
    base_model: str | None = None  # model.name it was trained on, when recorded
    seed: int | None = None  # that run's seed (it fixes a tiny random base model's weights)
    source_run: str | None = None

    @property
    def weights(self) -> Path:
        return self.weights_dir / ADAPTER_WEIGHTS

    def record(self) -> dict[str, Any]:
        """What summary.json (``start_adapter``) and the checkpoints keep of it."""
        return {
            "path": self.given,
            "kind": self.kind,
            "weights": str(self.weights.resolve()),
            "checkpoint": self.weights_dir.name if self.kind != "adapter" else None,
            "source_run": self.source_run,
            "base_model": self.base_model,
            "seed": self.seed,
            "r": self.adapter_config.get("r"),
            "alpha": self.adapter_config.get("lora_alpha"),
            "sha256": _sha256(self.weights),
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{KEY}: cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{KEY}: {path} is not a JSON object")
    return data


def _run_provenance(run_dir: Path) -> tuple[str | None, int | None]:
    """(model.name, seed) from a run's config.json; (None, None) when it has none."""
    cfg = run_dir / "config.json"
    if not cfg.is_file():
        return None, None
    data = _read_json(cfg)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    seed = data.get("seed")
    return model.get("name"), int(seed) if isinstance(seed, int) else None


def _has_adapter(path: Path) -> bool:
    return (path / ADAPTER_WEIGHTS).is_file() and (path / ADAPTER_CONFIG).is_file()


def resolve_adapter(given: str) -> StartAdapter:
    """The adapter ``model.adapter`` names (see the module docstring); ConfigError if none."""
    path = Path(given).expanduser()
    if not path.exists():
        raise ConfigError(f"{KEY}: {path} does not exist; {WHAT}")
    if not path.is_dir():
        raise ConfigError(f"{KEY}: {path} is a file; {WHAT}")
    if _has_adapter(path):
        run_dir = path.parent.parent
        if (path / "state.json").is_file() and path.parent.name == "checkpoints":
            base, seed = _run_provenance(run_dir)
            return StartAdapter(
                given,
                "checkpoint",
                path,
                _read_json(path / ADAPTER_CONFIG),
                base,
                seed,
                str(run_dir.resolve()),
            )
        info = _read_json(path / EXPORT_INFO) if (path / EXPORT_INFO).is_file() else {}
        seed = info.get("seed")
        return StartAdapter(
            given,
            "adapter",
            path,
            _read_json(path / ADAPTER_CONFIG),
            info.get("base_model"),
            int(seed) if isinstance(seed, int) else None,
            info.get("source_run"),
        )
    if (path / "checkpoints").is_dir():
        try:
            ckpt = find_checkpoint(path)
        except ExportError as e:
            raise ConfigError(f"{KEY}: {e}") from e
        base, seed = _run_provenance(path)
        return StartAdapter(
            given, "run", ckpt, _read_json(ckpt / ADAPTER_CONFIG), base, seed, str(path.resolve())
        )
    if (path / EXPORT_INFO).is_file() and _read_json(path / EXPORT_INFO).get("merged"):
        raise ConfigError(
            f"{KEY}: {path} is a merged model (asrl export --merged), not an adapter: use "
            f"it as model.name={path}, or export the run without --merged"
        )
    raise ConfigError(
        f"{KEY}: {path} holds neither {ADAPTER_WEIGHTS} + {ADAPTER_CONFIG} nor a "
        f"checkpoints/ folder; {WHAT}"
    )


def _modules(value: Any) -> list[str] | str:
    """PEFT writes target_modules as a list (saved from a set: any order) or a regex."""
    return sorted(value) if isinstance(value, (list, tuple, set)) else str(value)


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_compatible(src: StartAdapter, model: ModelConfig, seed: int) -> None:
    """ConfigError naming both sides when the adapter cannot be this config's LoRA."""
    from asrl.model.loading import TINY_MODELS

    ac = src.adapter_config
    where = f"{KEY}: {src.given}" + (f" ({src.weights_dir.name})" if src.kind == "run" else "")
    if ac.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{where} is a {ac.get('peft_type')} adapter; asrl trains LoRA")
    variants = [k for k in ("use_dora", "use_rslora") if ac.get(k)]
    if variants or ac.get("rank_pattern") or ac.get("alpha_pattern"):
        raise ConfigError(
            f"{where} uses {', '.join(variants) or 'per-module rank/alpha patterns'}; asrl's "
            "LoRA is plain (one rank and alpha for every module)"
        )
    theirs, ours = [], []
    if ac.get("r") != model.lora.r:
        theirs.append(f"r={ac.get('r')}")
        ours.append(f"model.lora.r={model.lora.r}")
    if ac.get("lora_alpha") != model.lora.alpha:
        theirs.append(f"lora_alpha={ac.get('lora_alpha')}")
        ours.append(f"model.lora.alpha={model.lora.alpha}")
    if _modules(ac.get("target_modules")) != _modules(model.lora.target_modules):
        theirs.append(f"target_modules {_modules(ac.get('target_modules'))}")
        ours.append(f"model.lora.target_modules {_modules(model.lora.target_modules)}")
    if theirs:
        raise ConfigError(
            f"{where} has {', '.join(theirs)}; this config has {', '.join(ours)}. Set "
            "model.lora to the adapter's shape (e.g. --set model.lora.r=...)"
        )
    if src.base_model is not None and not _same_model(src.base_model, model.name):
        raise ConfigError(
            f"{where} was trained on model.name={src.base_model}; this config has "
            f"model.name={model.name}. Use the same base model"
        )
    if model.name in TINY_MODELS and src.seed is not None and src.seed != seed:
        raise ConfigError(
            f"{where} was trained on {model.name} built with seed={src.seed}; this config "
            f"has seed={seed}, and a tiny random model's weights depend on the seed. Set "
            f"seed={src.seed}"
        )


def load_adapter(policy: Any, src: StartAdapter) -> None:
    """Copy the adapter's weights into ``policy``'s fresh LoRA (before any sharding)."""
    from asrl.model.loading import load_lora_weights

    try:
        unexpected, missing = load_lora_weights(policy.model, src.weights)
    except RuntimeError as e:  # a shape mismatch: another base model's widths
        first = str(e).strip().splitlines()
        raise ConfigError(
            f"{KEY}: {src.weights} does not fit this model ({first[-1] if first else e})"
        ) from e
    if unexpected or missing:
        raise ConfigError(
            f"{KEY}: {src.weights} does not match this model's LoRA layers (unexpected: "
            f"{unexpected[:3]}, missing: {missing[:3]}); was it trained on another base model?"
        )
