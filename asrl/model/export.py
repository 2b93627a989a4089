"""``asrl export RUNDIR OUTDIR [--merged] [--checkpoint NAME] [--force]``.

Takes a run's latest checkpoint (or the named one) and writes something other tools load:

* without ``--merged``: the LoRA adapter (``adapter_model.safetensors`` +
  ``adapter_config.json``) and the tokenizer, for ``PeftModel.from_pretrained(base, OUTDIR)``;
* with ``--merged``: the base model loaded exactly as the run loaded it (``model.name`` and
  ``seed`` from the run's ``config.json``, so the tiny random models too), the adapter's
  weights set into it, LoRA merged into the base weights (``merge_and_unload``), saved as
  safetensors with the tokenizer: ``AutoModelForCausalLM.from_pretrained(OUTDIR)`` loads a
  standard model, PEFT not needed.

Either way ``OUTDIR/asrl_export.json`` records the source run, the checkpoint and whether
the weights are merged. The export is written to a temporary directory beside OUTDIR and
renamed into place, so an interrupted export leaves no half-written model behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asrl.errors import ExportError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
EXPORT_INFO = "asrl_export.json"
DTYPES = ("float32", "bfloat16", "float16")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first (names sort by epoch: ``epoch-NNNN``)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")  # .epoch-NNNN.tmp: a checkpoint being written
        and (p / ADAPTER_WEIGHTS).is_file()
        and (p / ADAPTER_CONFIG).is_file()
    )


def find_checkpoint(run_dir: str | Path, name: str | None = None) -> Path:
    """The named checkpoint (``epoch-0003``, or just ``3``) or else the latest one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run directory not found: {run_dir}")
    available = list_checkpoints(run_dir)
    names = ", ".join(p.name for p in available) or "none"
    if name is None:
        if not available:
            raise ExportError(
                f"no checkpoint found in {run_dir / 'checkpoints'} (a run writes one at the "
                "end of each epoch unless checkpoint.every=none)"
            )
        return available[-1]
    wanted = f"epoch-{int(name):04d}" if name.isdigit() else name
    for p in available:
        if p.name == wanted:
            return p
    raise ExportError(f"checkpoint '{name}' not found in {run_dir / 'checkpoints'}; have: {names}")


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ExportError(f"{path} not found: is {run_dir} an asrl run directory?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ExportError(f"{path}: has no 'model' section")
    return data


def load_trained_policy(
    run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "cpu"
) -> tuple[Any, Path]:
    """The run's policy (base loaded as the run did + the checkpoint's adapter) on ``device``.

    Returns ``(policy, checkpoint_dir)``. Autocast is off: the weights stay fp32 as trained.
    """
    from asrl.config import config_from_dict
    from asrl.model.loading import load_lora_weights, load_policy

    run_dir = Path(run_dir)
    ckpt = (
        Path(checkpoint) if isinstance(checkpoint, Path) else find_checkpoint(run_dir, checkpoint)
    )
    data = read_run_config(run_dir)
    # only the model section (and the seed, which fixes the tiny models' random weights)
    # matters here; the rest of the run's settings are not needed to rebuild the policy
    cfg = config_from_dict({"model": data["model"], "seed": int(data.get("seed", 0))})
    cfg.model.device = device
    cfg.model.autocast = "none"
    policy = load_policy(cfg.model, seed=cfg.seed)
    unexpected, missing_lora = load_lora_weights(policy.model, ckpt / ADAPTER_WEIGHTS)
    if unexpected or missing_lora:
        raise ExportError(
            f"{ckpt / ADAPTER_WEIGHTS} does not match the model in {run_dir / 'config.json'} "
            f"(unexpected: {unexpected[:3]}, missing: {missing_lora[:3]})"
        )
    policy.model.eval()
    return policy, ckpt


def _checkpoint_epoch(ckpt: Path) -> int | None:
    try:
        return int(json.loads((ckpt / "state.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_outdir(out: Path, run_dir: Path, force: bool) -> None:
    r_out, r_run = out.resolve(), run_dir.resolve()
    if r_out == r_run or r_out in r_run.parents or (r_out / "checkpoints").exists():
        raise ExportError(f"refusing to export into {out}: it is (or holds) a run directory")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; pass --force to replace it")


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    merged: bool = False,
    checkpoint: str | None = None,
    force: bool = False,
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """Export a run's checkpoint to ``out_dir`` (see the module docstring); returns out_dir."""
    run_dir, out = Path(run_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "float32" and not merged:
        raise ExportError("--dtype applies to --merged exports only (the adapter is copied)")
    ckpt = find_checkpoint(run_dir, checkpoint)
    data = read_run_config(run_dir)
    _check_outdir(out, run_dir, force)
    model_name = data["model"].get("name")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        if merged:
            import torch

            policy, _ = load_trained_policy(run_dir, ckpt, device=device)
            model = policy.model.merge_and_unload()
            model = model.to(device="cpu", dtype=getattr(torch, dtype))
            model.config.use_cache = True
            from asrl import quiet

            with quiet.library_call():  # DeepSpeed's import notice (asrl/quiet.py)
                model.save_pretrained(tmp, safe_serialization=True)
            tokenizer = policy.tokenizer
        else:
            from asrl.model.loading import load_tokenizer

            for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, "README.md"):
                if (ckpt / name).is_file():
                    shutil.copy2(ckpt / name, tmp / name)
            tokenizer = load_tokenizer(model_name, bool(data["model"].get("trust_remote_code")))
        tokenizer.save_pretrained(tmp)
        adapter_cfg = json.loads((ckpt / ADAPTER_CONFIG).read_text())
        info = {
            "source_run": str(run_dir.resolve()),
            "checkpoint": ckpt.name,
            "checkpoint_path": str(ckpt.resolve()),
            "epoch": _checkpoint_epoch(ckpt),
            "merged": merged,
            "dtype": dtype if merged else None,
            "base_model": model_name,
            "seed": data.get("seed"),  # fixes the weights of the tiny random base models
            "method": (data.get("schedule") or {}).get("method"),
            "lora": {"r": adapter_cfg.get("r"), "alpha": adapter_cfg.get("lora_alpha")},
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)  # checked above: empty, or --force
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _export(args: argparse.Namespace) -> int:
    try:
        out = export_run(
            args.run_dir,
            args.out_dir,
            merged=args.merged,
            checkpoint=args.checkpoint,
            force=args.force,
            dtype=args.dtype,
            device=args.device,
        )
    except ExportError as e:
        print(f"asrl export: {e}", file=sys.stderr)
        return 1
    info = json.loads((out / EXPORT_INFO).read_text())
    kind = f"merged model ({info['dtype']})" if info["merged"] else "LoRA adapter"
    print(f"exported {kind} from {info['checkpoint']} of {args.run_dir} to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="write a run's checkpoint as a PEFT adapter or a merged transformers model",
        description="Export the latest (or --checkpoint) checkpoint of RUNDIR to OUTDIR.",
    )
    e.add_argument("run_dir", metavar="RUNDIR", help="a training output directory")
    e.add_argument("out_dir", metavar="OUTDIR", help="where to write the export")
    e.add_argument(
        "--merged",
        action="store_true",
        help="merge LoRA into the base weights: a standard model for from_pretrained",
    )
    e.add_argument("--checkpoint", metavar="NAME", help="e.g. epoch-0003 or 3 (default: latest)")
    e.add_argument("--force", action="store_true", help="replace OUTDIR if it is not empty")
    e.add_argument("--dtype", choices=DTYPES, default="float32", help="merged weights' dtype")
    e.add_argument("--device", default="cpu", help="device used to load and merge (default cpu)")
    e.set_defaults(func=_export)
