"""Helpers the benchmarks share (the CPU's name, asrl's start adapter and data, and for the
asrl-vs-TRL ones, ``vs_trl.py`` and ``grpo_learns.py``, the rest).

Run the benchmarks as scripts (``python benchmarks/NAME.py``): this directory is then on
``sys.path`` and ``from _common import ...`` finds this file.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

# LoRA on all seven projections, as asrl's default ``model.lora.target_modules``
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resolve_precision(precision: str) -> str:
    """``auto`` -> asrl's own choice on this CPU (bf16 only where measurably faster)."""
    if precision != "auto":
        return precision
    import torch

    from asrl.model.loading import pick_autocast

    return "bf16" if pick_autocast("auto", torch.device("cpu")) == torch.bfloat16 else "fp32"


def trl_common_args(out: str, bf16: bool) -> dict[str, Any]:
    """TrainingArguments both TRL trainers get: CPU, the given precision, no saving, no logs."""
    return dict(
        output_dir=out,
        report_to=[],
        use_cpu=True,
        bf16=bf16,
        gradient_checkpointing=False,
        save_strategy="no",
        logging_steps=10_000,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def cpu_name() -> str:
    """``lscpu``'s model name (the processor string where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    names = (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    return next(names, "") or platform.processor() or "unknown"


def cpu_flags() -> str:
    """The vector and matrix extensions this CPU has, of those that decide matmul speed."""
    flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
    want = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    return " ".join(f for f in want if f in flags) or "none of avx2/avx512/amx"


def cpu_family() -> str:
    """lscpu's CPU family and model numbers (they tell EPYC generations apart)."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    get = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}
    return f"family {get.get('CPU family', '?')} model {get.get('Model', '?')}"


def commit() -> str:
    """This checkout's commit, with '+changes' when the working tree differs from it."""
    git = ["git", "-C", str(Path(__file__).resolve().parent)]
    sha = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "-uno"], capture_output=True, text=True)
    return sha.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def load_start(config: str, data: str, sets: list[str], adapter: str, seed: int = 0):
    """asrl's config (``data.path=DATA`` and ``sets`` applied), its thinking format, the policy
    with ``adapter`` loaded (``"base"``: none) and the data's live splits, refreshed once."""
    from asrl.config import load_config
    from asrl.data.live import LiveDataset
    from asrl.data.sources import open_source
    from asrl.model.adapter import load_adapter, resolve_adapter
    from asrl.model.loading import load_policy

    cfg = load_config(config, [f"data.path={data}", *sets])
    fmt = cfg.format.spec()
    policy = load_policy(cfg.model, seed=seed)
    if adapter != "base":
        load_adapter(policy, resolve_adapter(adapter))
    live = LiveDataset([open_source(data, cfg.data, fmt)], cfg.data.split)
    live.refresh()
    return cfg, fmt, policy, live


def load_base(name: str, seed: int = 0):
    """The plain fp32 base model (no adapter) and tokenizer, exactly as asrl loads them.

    The tiny random test models come from asrl's own builder with the run's seed, so both
    frameworks start from the same weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from asrl.model.loading import TINY_MODELS, _tiny_model, load_tokenizer, resolve_model_path

    tok = load_tokenizer(name)
    if name in TINY_MODELS:
        return _tiny_model(name, tok, seed), tok
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name), dtype=torch.float32, use_safetensors=True
    )
    return model, tok


def run_child(
    script: str, worker: str, argv: list[str], python: str | None = None
) -> dict[str, Any]:
    """Run ``script --worker WORKER ARGV...`` in a fresh interpreter; its ``RESULT {json}`` line.

    The child's stderr (its progress lines, and any traceback) goes straight to ours, so a
    long run shows where it is; its stdout is read for the result."""
    cmd = [python or sys.executable, script, "--worker", worker, *argv]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-2000:])
        raise SystemExit(f"{worker} failed (rc {proc.returncode})")
    return json.loads(lines[-1].removeprefix("RESULT "))


def progress(line: str) -> None:
    """One progress line from a worker, on stderr (``run_child`` passes it through)."""
    print(line, file=sys.stderr, flush=True)


def print_result(res: dict[str, Any]) -> None:
    """A worker's answer to ``run_child``: one ``RESULT`` line with its peak RSS added."""
    res["rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(res), flush=True)
