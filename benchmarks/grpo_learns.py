"""Does asrl's GRPO phase raise held-out correctness? Side by side with TRL's GRPOTrainer.

    PYTHONPATH=. .venv/bin/python benchmarks/grpo_learns.py [--steps 30] [--seeds 3]
        [--questions 8] [--generations 6] [--new-tokens 96] [--lr 2e-5] [--loss-type grpo]
        [--eval-examples 60] [--eval-every 10] [--model smollm2-135m] [--work DIR]
        [--start ADAPTER] [--sides asrl,trl] [--precision auto|fp32|bf16] [--out docs]
    ... --smoke     # tiny random model, 2 steps, 1 seed: proves the script runs (seconds)

Stage 0, cached under ``--work`` and reused when present: synthetic records from asrl's
generator (``asrl data generate``, 700 by default: ≥ 60 held-out val examples at the
80/10/10 split), then ``asrl train --set schedule.method=sft`` for ``--sft-epochs`` epochs and
``asrl export`` to a PEFT adapter directory. ``--start DIR`` skips the SFT and starts from
that adapter instead.

Then, for each seed, asrl and TRL alternate (asrl s0, TRL s0, asrl s1, ...), each in a fresh
child process, on identical work: the same start adapter, the same questions at every step
(drawn once per seed), G completions each, the same max new tokens, temperature, top-p,
constant LR, loss type, beta = 0, clip range, group reward scaling, gradient clipping and
micro-batch size, one optimizer step per generation batch, the same reward (asrl's
``RewardSet`` from the config, wrapped as a TRL reward function) and the same precision.
Held-out correctness is measured with asrl's own evaluator (greedy, the same val examples)
on the start adapter and on each side's adapter every ``--eval-every`` steps and at the end;
evaluation time is not counted in the GRPO seconds. See docs/grpo_learns.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    cpu_name,
    load_base,
    print_result,
    progress,
    resolve_precision,
    run_child,
    trl_common_args,
)

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("asrl", "trl")

# what the real benchmark runs when a flag is not given (None: the config's value)
DEFAULTS: dict[str, Any] = dict(
    config="configs/demo.yaml",
    model="smollm2-135m",
    steps=30,
    seeds=3,
    records=700,
    sft_epochs=2,
    eval_examples=60,
    eval_every=10,
    precision="auto",
    work="runs/grpo_learns",
    out="docs",
)
# --smoke: the tiny random model, a handful of examples; proves the script runs end to end
SMOKE: dict[str, Any] = dict(
    config="configs/tiny.yaml",
    model="tiny-random-llama",
    steps=2,
    seeds=1,
    records=60,
    sft_epochs=1,
    questions=2,
    generations=3,
    new_tokens=12,
    micro_batch=3,
    eval_examples=4,
    eval_new_tokens=12,
    eval_every=1,
    precision="fp32",
    threads=1,  # the tiny model gains nothing from more; a loaded CPU loses a lot
    work="runs/grpo_learns-smoke",
    out=None,  # the work directory: a smoke run leaves docs/ alone
)


# ----------------------------------------------------------------------------- small maths


def mean_sd(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def welch_p(after: list[float], before: list[float]) -> float:
    """Two-sided Welch t-test p-value of ``after`` vs ``before``; NaN when undefined.

    The start is one adapter evaluated greedily, so ``before`` is the same value once per
    seed (no variance) and the test reduces to a one-sample t-test of ``after`` against it.
    Undefined with a single seed, or when neither sample varies.
    """
    from scipy.stats import ttest_ind

    if len(after) < 2 or (len(set(after)) == 1 and len(set(before)) == 1):
        return float("nan")
    return float(ttest_ind(after, before, equal_var=False).pvalue)


def per_second_ratio(ours: float, theirs: float) -> float:
    """ours / theirs for gain rates; inf when only ours is positive, NaN when neither is."""
    if theirs > 0:
        return ours / theirs
    return float("inf") if ours > 0 else float("nan")


def finite_or_none(x: Any) -> Any:
    """``x`` with every NaN / infinite float replaced by None (strict JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_or_none(v) for v in x]
    return x


def step_line(side: str, seed: int, step: dict[str, Any], of: int) -> str:
    """``asrl s0 step  3/30: reward 0.412, 71s``: one worker's progress after a step."""
    return (
        f"{side} s{seed} step {step['step']:>2}/{of}: "
        f"reward {step['reward']:.3f}, {step['seconds']:.0f}s"
    )


def eval_line(side: str, seed: int, ev: dict[str, Any]) -> str:
    """``asrl s0 eval at step 15: correct 53.3% (n = 60), format 98.0%``."""
    return (
        f"{side} s{seed} eval at step {ev['step']}: correct {100 * ev['correctness']:.1f}% "
        f"(n = {ev['n']}), format {100 * ev['format_accuracy']:.1f}%"
    )


def eval_due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


# ----------------------------------------------------------------------------- settings


def resolve(a: argparse.Namespace) -> None:
    """Fill unset flags: the smoke or full defaults, then the config's GRPO/eval values."""
    for key, value in (SMOKE if a.smoke else DEFAULTS).items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    if a.out is None:
        a.out = a.work
    from asrl.config import load_config

    cfg = load_config(config_path(a), a.set)
    g, e = cfg.grpo, cfg.eval
    for key, value in dict(
        questions=g.questions_per_epoch,
        generations=g.num_generations,
        new_tokens=g.max_new_tokens,
        lr=g.lr,
        loss_type=g.loss_type,
        temperature=g.temperature,
        top_p=g.top_p,
        micro_batch=g.micro_batch_size,
        eval_new_tokens=e.max_new_tokens,
    ).items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    rows = a.questions * a.generations
    if rows % a.micro_batch:
        raise SystemExit(
            f"--micro-batch {a.micro_batch} must divide --questions x --generations = {rows}: "
            "TRL's loss for one optimizer step is then the same mean over completions as asrl's"
        )
    a.sides = (
        [s.strip() for s in a.sides.split(",") if s.strip()]
        if isinstance(a.sides, str)
        else a.sides
    )
    bad = [s for s in a.sides if s not in SIDES]
    if bad or not a.sides:
        raise SystemExit(f"--sides: use a comma-separated subset of {','.join(SIDES)}, not {bad}")
    a.precision = resolve_precision(a.precision)


def config_path(a: argparse.Namespace) -> Path:
    """--config as given, else relative to the repository (configs/demo.yaml from anywhere)."""
    p = Path(a.config)
    return p.resolve() if p.exists() else ROOT / p


def run_config(a: argparse.Namespace):
    """The asrl Config this benchmark works with: the given config, model and dataset."""
    from asrl.config import load_config

    base = [f"model.name={a.model}", f"data.path={a.data}", "report_to=none"]
    return load_config(config_path(a), base + list(a.set))


def grpo_config(a: argparse.Namespace, cfg):
    """The GRPO settings both sides use: one optimizer step per round, constant LR, beta 0."""
    return dataclasses.replace(
        cfg.grpo,
        lr=a.lr,
        lr_final_ratio=1.0,  # (one step per round: no decay either way)
        questions_per_epoch=a.questions,
        num_generations=a.generations,
        max_new_tokens=a.new_tokens,
        temperature=a.temperature,
        top_p=a.top_p,
        loss_type=a.loss_type,
        beta=0.0,
        steps_per_round=1,
        micro_batch_size=a.micro_batch,
        samples_to_log=0,
    )


def load_splits(cfg) -> dict[str, list]:
    """The train / val / test splits exactly as an asrl run reads them (stable, by id)."""
    from asrl.data.live import LiveDataset
    from asrl.data.sources import open_source

    ds = LiveDataset([open_source(cfg.data.path, cfg.data, cfg.format.spec())], cfg.data.split)
    ds.refresh()
    return ds.splits


# ----------------------------------------------------------------------------- adapters


def adapter_lora(adapter: Path):
    """asrl's LoraConfig with the exported adapter's shape (r, alpha, dropout, targets)."""
    from asrl.config import LoraConfig

    c = json.loads((adapter / "adapter_config.json").read_text())
    targets = c["target_modules"]
    return LoraConfig(
        r=c["r"],
        alpha=c["lora_alpha"],
        dropout=c.get("lora_dropout", 0.0),
        target_modules=sorted(targets) if isinstance(targets, list | set) else [targets],
    )


def lora_state(model) -> dict[str, Any]:
    """The adapter's weights (PEFT's names, adapter name stripped), as fp32 copies."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().float().clone() for k, v in get_peft_model_state_dict(model).items()}


def check_adapter_matches(model, adapter: Path) -> None:
    """The model's LoRA weights are exactly the adapter file's (both sides check at start)."""
    from safetensors.torch import load_file

    want = load_file(adapter / "adapter_model.safetensors")
    have = lora_state(model)
    if sorted(want) != sorted(have):
        raise SystemExit(f"{adapter}: adapter keys do not match the model's LoRA layers")
    for k, v in want.items():
        if not (v.float() == have[k]).all():
            raise SystemExit(f"{adapter}: {k} was not loaded into the model")


def copy_adapter(src, dst) -> None:
    """Set ``src``'s LoRA weights into ``dst`` (another PEFT model of the same shape)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    res = set_peft_model_state_dict(dst, get_peft_model_state_dict(src))
    missing = [k for k in getattr(res, "missing_keys", []) or [] if "lora_" in k]
    if getattr(res, "unexpected_keys", None) or missing:
        raise SystemExit(f"adapter copy mismatch: {res}")


def load_start_policy(a: argparse.Namespace):
    """asrl's Policy on the start adapter, at the benchmark's precision, on the CPU."""
    from asrl.config import ModelConfig
    from asrl.model.adapter import check_compatible, load_adapter, resolve_adapter
    from asrl.model.loading import load_policy

    mc = ModelConfig(
        name=a.model,
        device="cpu",
        autocast="bf16" if a.precision == "bf16" else "none",
        lora=adapter_lora(Path(a.adapter)),
    )
    mc.adapter = str(a.adapter)
    start = resolve_adapter(mc.adapter)  # what `asrl train` does with model.adapter
    check_compatible(start, mc, a.base_seed)
    policy = load_policy(mc, seed=a.base_seed)
    load_adapter(policy, start)
    check_adapter_matches(policy.model, Path(a.adapter))
    return policy


class Evaluator:
    """asrl's held-out evaluation (greedy) of any PEFT model's adapter, on its own Policy.

    Both sides are evaluated the same way: their LoRA weights are copied into this policy,
    so decoding, batching and scoring never depend on the framework that trained them.
    """

    def __init__(self, a: argparse.Namespace, cfg, val: list) -> None:
        from asrl.rewards.builtin import RewardSet

        self.policy = load_start_policy(a)
        self.cfg, self.val = cfg, val
        self.eval_cfg = dataclasses.replace(
            cfg.eval, max_examples=a.eval_examples, max_new_tokens=a.eval_new_tokens
        )
        self.rewards = RewardSet.from_config(cfg.reward, cfg.format.spec())

    def __call__(self, model=None) -> dict[str, float]:
        from asrl.train.evaluation import evaluate

        if model is not None:
            copy_adapter(model, self.policy.model)
        t = time.perf_counter()
        m, _ = evaluate(
            self.policy,
            self.val,
            self.cfg.format.spec(),
            self.rewards,
            self.eval_cfg,
            self.cfg.data.max_length,
            self.cfg.data.system_prompt,
        )
        return {
            "correctness": m["eval/correctness"],
            "format_accuracy": m["eval/format_accuracy"],
            "reward": m["eval/reward_mean"],
            "n": int(m["eval/n"]),
            "eval_s": time.perf_counter() - t,
            # per record type (the generator's simple / mixed / complex / multi_turn)
            "by_type": {
                k.removeprefix("eval/correctness/"): v
                for k, v in m.items()
                if k.startswith("eval/correctness/")
            },
        }


# ----------------------------------------------------------------------------- workers


def _plan(a: argparse.Namespace, splits) -> list[list]:
    """The seed's questions, step by step, as Examples."""
    by_id = {ex.id: ex for ex in splits["train"]}
    return [[by_id[i] for i in step] for step in json.loads(Path(a.plan).read_text())["steps"]]


def _delta(start: dict, model) -> float:
    """L2 norm of how far the adapter moved from the start."""
    now = lora_state(model)
    return math.sqrt(sum(float(((now[k] - v) ** 2).sum()) for k, v in start.items()))


def _fingerprint(state: dict) -> float:
    return sum(float(v.double().abs().sum()) for v in state.values())


def asrl_worker(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from asrl.phases.grpo import run_grpo_phase
    from asrl.rewards.builtin import RewardSet
    from asrl.train.state import derived_seed, seed_everything

    cfg = run_config(a)
    splits = load_splits(cfg)
    plan = _plan(a, splits)
    seed_everything(a.seed)
    policy = load_start_policy(a)
    start = lora_state(policy.model)
    evaluator = Evaluator(a, cfg, splits["val"])
    gcfg = grpo_config(a, cfg)
    rewards = RewardSet.from_config(cfg.reward, cfg.format.spec())
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=gcfg.lr, weight_decay=0.0)
    steps, evals, grpo_s = [], [], 0.0
    for k, questions in enumerate(plan, start=1):
        t = time.perf_counter()
        res = run_grpo_phase(
            policy,
            questions,  # exactly this step's questions: the phase samples all of them
            gcfg,
            rewards,
            opt,
            random.Random(derived_seed(a.seed, k, "grpo")),
            derived_seed(a.seed, k, "rollout"),
            cfg.data.system_prompt,
            desc=f"asrl step {k}",
        )
        grpo_s += time.perf_counter() - t
        assert res.steps == 1, "one optimizer step per generation batch"
        steps.append(
            {
                "step": k,
                "seconds": grpo_s,
                "reward": res.metrics["train/reward_mean"],
                "completion_len": res.metrics["train/completion_len"],
                # why a step moved the policy as much as it did (TRL's side has no such record)
                **{
                    k: res.metrics.get(f"train/{k}")
                    for k in ("frac_zero_std_groups", "clipped_ratio", "entropy", "clip_ratio")
                },
                "grad_norm": res.metrics.get("train/grpo_grad_norm"),
                "questions": sorted(ex.id for ex in questions),
            }
        )
        progress(step_line("asrl", a.seed, steps[-1], len(plan)))
        if eval_due(k, a.eval_every, len(plan)):
            evals.append({"step": k, "seconds": grpo_s, **evaluator(policy.model)})
            progress(eval_line("asrl", a.seed, evals[-1]))
    return {
        "side": "asrl",
        "seed": a.seed,
        "steps": steps,
        "evals": evals,
        "grpo_seconds": grpo_s,
        "start_fingerprint": _fingerprint(start),
        "adapter_delta": _delta(start, policy.model),
        "threads": torch.get_num_threads(),
    }


def trl_worker(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    import trl
    from datasets import Dataset
    from peft import PeftModel
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from asrl.data.render import chat_messages, prompt_ids
    from asrl.rewards.builtin import RewardSet

    cfg = run_config(a)
    splits = load_splits(cfg)
    plan = _plan(a, splits)
    gcfg = grpo_config(a, cfg)
    base, tok = load_base(a.model, a.base_seed)
    model = PeftModel.from_pretrained(base, a.adapter, is_trainable=True)
    check_adapter_matches(model, Path(a.adapter))
    start = lora_state(model)
    evaluator = Evaluator(a, cfg, splits["val"])
    rewards = RewardSet.from_config(cfg.reward, cfg.format.spec())

    flat = [ex for step in plan for ex in step]  # in step order; TRL reads it unshuffled
    prompts = [chat_messages(ex, cfg.data.system_prompt) for ex in flat]
    # TRL renders conversational prompts with the chat template itself: check it gives the
    # very token ids asrl generates from
    same_prompt_ids = all(
        tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        == prompt_ids(tok, ex, cfg.data.system_prompt)
        for p, ex in zip(prompts, flat)
    )
    ds = Dataset.from_dict({"prompt": prompts, "row": list(range(len(flat)))})
    calls: list[dict[str, Any]] = []

    def asrl_reward(prompts, completions, row, completion_ids=None, **_):
        exs = [flat[i] for i in row]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        totals, _ = rewards.score(exs, texts)
        lens = [len(c) for c in completion_ids] if completion_ids is not None else None
        calls.append({"ids": [e.id for e in exs], "totals": totals, "lens": lens})
        return totals

    rows = a.questions * a.generations
    steps, evals = [], []
    clock = {"t0": 0.0, "eval_s": 0.0}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            grpo_s = time.perf_counter() - clock["t0"] - clock["eval_s"]
            k, call = state.global_step, calls[-1]
            if len(calls) != k:
                raise RuntimeError(f"TRL scored {len(calls)} generation batches in {k} steps")
            steps.append(
                {
                    "step": k,
                    "seconds": grpo_s,
                    "reward": statistics.fmean(call["totals"]),
                    "completion_len": statistics.fmean(call["lens"]) if call["lens"] else None,
                    "questions": sorted(set(call["ids"])),
                }
            )
            progress(step_line("trl", a.seed, steps[-1], len(plan)))
            if eval_due(k, a.eval_every, len(plan)):
                t = time.perf_counter()
                evals.append({"step": k, "seconds": grpo_s, **evaluator(model)})
                clock["eval_s"] += time.perf_counter() - t
                progress(eval_line("trl", a.seed, evals[-1]))

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            loss_type=gcfg.loss_type,
            beta=0.0,
            scale_rewards=gcfg.scale_rewards,
            epsilon=gcfg.epsilon,
            epsilon_high=gcfg.epsilon if gcfg.epsilon_high is None else gcfg.epsilon_high,
            num_generations=gcfg.num_generations,
            max_completion_length=gcfg.max_new_tokens,
            temperature=gcfg.temperature,
            top_p=gcfg.top_p,
            top_k=0,
            mask_truncated_completions=False,
            per_device_train_batch_size=a.micro_batch,
            gradient_accumulation_steps=rows // a.micro_batch,
            generation_batch_size=rows,  # one generation batch per optimizer step
            num_iterations=1,
            shuffle_dataset=False,
            max_steps=len(plan),
            learning_rate=gcfg.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=gcfg.max_grad_norm,
            seed=a.seed,
            **{**trl_common_args(out, a.precision == "bf16"), "logging_steps": 1},
        )
        assert args.steps_per_generation == args.gradient_accumulation_steps
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[asrl_reward],
            args=args,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[Clock()],
        )
        clock["t0"] = time.perf_counter()
        trainer.train()
        grpo_s = time.perf_counter() - clock["t0"] - clock["eval_s"]
    return {
        "side": "trl",
        "seed": a.seed,
        "steps": steps,
        "evals": evals,
        "grpo_seconds": grpo_s,
        "start_fingerprint": _fingerprint(start),
        "adapter_delta": _delta(start, model),
        "same_prompt_ids": same_prompt_ids,
        "eos_token_ids": {"trl": list(trainer.eos_token_ids), "asrl": [tok.eos_token_id]},
        "trl_version": trl.__version__,
        "threads": torch.get_num_threads(),
    }


WORKERS = {"asrl": asrl_worker, "trl": trl_worker}


# ----------------------------------------------------------------------------- stage 0


def _asrl_cli(argv: list[str]) -> None:
    from asrl.cli import main as asrl_main

    print("$ asrl " + " ".join(argv), flush=True)
    rc = asrl_main(argv)
    if rc:
        raise SystemExit(f"asrl {argv[0]} failed (rc {rc})")


def stage0(a: argparse.Namespace) -> None:
    """Records and the SFT'd start adapter under --work (reused when present); sets
    ``a.data``, ``a.adapter`` and ``a.base_seed``."""
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    key = {"config": a.config, "model": a.model, "records": a.records, "seed": a.data_seed}
    data = work / "data" / "train.jsonl"
    stamp = work / "data.json"
    if not data.is_file() or not stamp.is_file() or json.loads(stamp.read_text()) != key:
        if data.exists():
            data.unlink()
        data.parent.mkdir(parents=True, exist_ok=True)
        _asrl_cli(
            ["data", "generate", "--to", str(data), "--count", str(a.records),
             "--seed", str(a.data_seed), "-c", str(config_path(a))]
        )  # fmt: skip
        stamp.write_text(json.dumps(key) + "\n")
    a.data = str(data.resolve())
    if a.start:
        a.adapter = str(Path(a.start).resolve())
        if not (Path(a.adapter) / "adapter_config.json").is_file():
            raise SystemExit(f"--start {a.start}: no adapter_config.json there (an `asrl export`?)")
    else:
        adapter = work / "start-adapter"
        sft_key = {**key, "sft_epochs": a.sft_epochs}
        sft_stamp = work / "start-adapter.json"
        if not (
            (adapter / "adapter_config.json").is_file()
            and sft_stamp.is_file()
            and json.loads(sft_stamp.read_text()) == sft_key
        ):
            run = work / "sft-run"
            shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(adapter, ignore_errors=True)
            _asrl_cli(
                ["train", "-c", str(config_path(a)), "-o", str(run),
                 "--set", "schedule.method=sft", "--set", f"schedule.epochs={a.sft_epochs}",
                 "--set", f"model.name={a.model}", "--set", f"data.path={data}",
                 "--set", "report_to=none"]
            )  # fmt: skip
            _asrl_cli(["export", str(run), str(adapter)])
            sft_stamp.write_text(json.dumps(sft_key) + "\n")
        else:
            print(f"start adapter: reusing {adapter}", flush=True)
        a.adapter = str(adapter.resolve())
    info_path = Path(a.adapter) / "asrl_export.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("base_model") not in (None, a.model):
        raise SystemExit(f"--start {a.adapter} was trained on {info['base_model']}, not {a.model}")
    a.base_seed = int(info.get("seed") or 0)  # fixes the tiny random models' weights


def start_eval(a: argparse.Namespace, cfg, val: list) -> dict[str, float]:
    """Held-out metrics of the start adapter (cached: greedy, the same for every seed)."""
    key = {
        "adapter": a.adapter,
        "adapter_mtime": (Path(a.adapter) / "adapter_model.safetensors").stat().st_mtime,
        "examples": a.eval_examples,
        "new_tokens": a.eval_new_tokens,
        "precision": a.precision,
        "data": a.data,
        "set": a.set,
    }
    path = Path(a.work) / "start-eval.json"
    if path.is_file() and (old := json.loads(path.read_text())).get("key") == key:
        return old["metrics"]
    metrics = Evaluator(a, cfg, val)()
    path.write_text(json.dumps({"key": key, "metrics": metrics}) + "\n")
    return metrics


# ----------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return ""

    cpu = cpu_name()
    import os
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("torch", "transformers", "peft", "trl"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    commit = sh("git", "rev-parse", "HEAD") or "unknown"
    if sh("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        **versions,
    }


def summarize(start: float, runs: list[dict], sides: list[str]) -> dict[str, dict[str, Any]]:
    """Per side: final correctness over seeds, gain (points), Welch p, GRPO seconds, rates."""
    out: dict[str, dict[str, Any]] = {}
    for side in sides:
        mine = [r for r in runs if r["side"] == side]
        finals = [r["evals"][-1]["correctness"] for r in mine]
        secs = [r["grpo_seconds"] for r in mine]
        fm, fsd = mean_sd(finals)
        gain = 100 * (fm - start)
        out[side] = {
            "seeds": len(mine),
            "final_mean": fm,
            "final_sd": fsd,
            "finals": finals,
            "gain_pts": gain,
            "welch_p": welch_p(finals, [start] * len(finals)),
            "grpo_seconds_mean": statistics.fmean(secs),
            "gain_pts_per_grpo_s": gain / statistics.fmean(secs),
            "reward_first": statistics.fmean(r["steps"][0]["reward"] for r in mine),
            "reward_last": statistics.fmean(r["steps"][-1]["reward"] for r in mine),
        }
    return out


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3f}"


def report(a: argparse.Namespace, info: dict, start: dict, runs: list[dict]) -> dict[str, Any]:
    s0 = start["correctness"]
    summary = summarize(s0, runs, a.sides)
    print()
    print(f"CPU: {info['cpu']} ({info['cores']} cores); {info['date']}; commit {info['commit']}")
    print(
        f"model {a.model}, precision {a.precision}; {a.steps} GRPO steps of {a.questions} "
        f"questions x {a.generations} completions x <= {a.new_tokens} new tokens, lr {a.lr:g}, "
        f"loss {a.loss_type}; {len(runs) // len(a.sides)} seed(s); held-out n = {start['n']}"
    )
    print()
    print("reward per step (mean over seeds) and cumulative GRPO seconds")
    head = "".join(f" {s + ' reward':>12s} {s + ' s':>9s}" for s in a.sides)
    print(f"{'step':>4s}{head}")
    for k in range(a.steps):
        cells = []
        for side in a.sides:
            mine = [r["steps"][k] for r in runs if r["side"] == side]
            cells.append(
                f" {statistics.fmean(x['reward'] for x in mine):12.3f}"
                f" {statistics.fmean(x['seconds'] for x in mine):9.1f}"
            )
        print(f"{k + 1:4d}{''.join(cells)}")
    print()
    print(
        f"{'side':6s} {'start':>7s} {'final (mean ± sd)':>19s} {'gain pts':>9s} {'Welch p':>8s} "
        f"{'GRPO s':>8s} {'pts/GRPO-s':>11s}"
    )
    for side, m in summary.items():
        final = f"{100 * m['final_mean']:.1f} ± {100 * m['final_sd']:.1f}"
        print(
            f"{side:6s} {100 * s0:6.1f}% {final:>18s}% {m['gain_pts']:+9.1f} "
            f"{_fmt_p(m['welch_p']):>8s} {m['grpo_seconds_mean']:8.0f} "
            f"{m['gain_pts_per_grpo_s']:11.4f}"
        )
    checks = []
    if "asrl" in summary:
        m = summary["asrl"]
        ok = m["gain_pts"] >= 10 and m["welch_p"] < 0.05 and m["grpo_seconds_mean"] <= 900
        checks.append(
            (
                "asrl gain >= 10 pts over the start, Welch p < 0.05, <= 15 min of GRPO",
                f"{m['gain_pts']:+.1f} pts, p {_fmt_p(m['welch_p'])}, "
                f"{m['grpo_seconds_mean']:.0f} s",
                ok,
            )
        )
    if "asrl" in summary and "trl" in summary:
        o, t = summary["asrl"], summary["trl"]
        checks.append(
            (
                f"at equal steps ({a.steps}): asrl gain >= TRL gain",
                f"{o['gain_pts']:+.1f} vs {t['gain_pts']:+.1f} pts",
                o["gain_pts"] >= t["gain_pts"],
            )
        )
        ratio = per_second_ratio(o["gain_pts_per_grpo_s"], t["gain_pts_per_grpo_s"])
        shown = "TRL gained nothing" if t["gain_pts_per_grpo_s"] <= 0 else f"{ratio:.2f}x"
        checks.append(
            (
                "gain per GRPO-second: asrl >= 2x TRL",
                f"{o['gain_pts_per_grpo_s']:.4f} vs {t['gain_pts_per_grpo_s']:.4f} pts/s ({shown})",
                not math.isnan(ratio) and ratio >= 2,
            )
        )
    print()
    for what, got, ok in checks:
        print(f"  {'MET    ' if ok else 'NOT MET'}  {what}: {got}")
    return {
        "summary": summary,
        "checks": [{"target": w, "measured": g, "met": ok} for w, g, ok in checks],
    }


def plot(runs: list[dict], start: dict, sides: list[str], path: Path) -> None:
    """2x2: reward and held-out correctness, against step and against GRPO seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    colors = {"asrl": "tab:blue", "trl": "tab:orange"}
    for side in sides:
        mine = [r for r in runs if r["side"] == side]
        label = {"asrl": "asrl", "trl": "TRL GRPOTrainer"}[
            side
        ] + f" ({len(mine)} seed{'s' * (len(mine) > 1)})"
        step = np.array([x["step"] for x in mine[0]["steps"]])
        rew = np.array([[x["reward"] for x in r["steps"]] for r in mine])
        sec = np.array([[x["seconds"] for x in r["steps"]] for r in mine]).mean(0)
        ev_step = np.array([0] + [x["step"] for x in mine[0]["evals"]])
        cor = 100 * np.array(
            [[start["correctness"]] + [x["correctness"] for x in r["evals"]] for r in mine]
        )
        ev_sec = np.array([[0.0] + [x["seconds"] for x in r["evals"]] for r in mine]).mean(0)
        for ax, x, y, marker in (
            (axes[0, 0], step, rew, None),
            (axes[0, 1], sec, rew, None),
            (axes[1, 0], ev_step, cor, "o"),
            (axes[1, 1], ev_sec, cor, "o"),
        ):
            mu, sd = y.mean(0), y.std(0, ddof=1) if len(y) > 1 else np.zeros(y.shape[1])
            ax.plot(x, mu, marker=marker, color=colors[side], label=label)
            ax.fill_between(x, mu - sd, mu + sd, color=colors[side], alpha=0.2, linewidth=0)
    for ax, xl, yl in (
        (axes[0, 0], "GRPO step", "train reward (mean of the step's completions)"),
        (axes[0, 1], "GRPO seconds (evaluation excluded)", "train reward"),
        (axes[1, 0], "GRPO step", "held-out correctness (%)"),
        (axes[1, 1], "GRPO seconds (evaluation excluded)", "held-out correctness (%)"),
    ):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
    axes[0, 0].legend()
    fig.suptitle("GRPO from one SFT'd adapter: mean ± 1 sd over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- driver


# the resolved settings a worker gets on its command line
CHILD_KEYS = (
    "config", "model", "data", "adapter", "base_seed", "questions", "generations", "new_tokens",
    "lr", "loss_type", "temperature", "top_p", "micro_batch", "eval_examples",
    "eval_new_tokens", "eval_every", "precision", "threads",
)  # fmt: skip


def child_argv(a: argparse.Namespace, seed: int, plan: Path) -> list[str]:
    keys = CHILD_KEYS
    given = [k for k in keys if getattr(a, k) is not None]
    return [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in given] + [
        *(f"--set={o}" for o in a.set),
        f"--seed={seed}",
        f"--plan={plan}",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, help="GRPO steps (optimizer steps) per run [30]")
    ap.add_argument("--seeds", type=int, help="seeds per side [3]")
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds run are FIRST..FIRST+SEEDS-1, so a run can add seeds to another [0]",
    )
    ap.add_argument("--questions", type=int, help="questions per step [config: 8]")
    ap.add_argument("--generations", type=int, help="completions per question, G [config: 6]")
    ap.add_argument("--new-tokens", type=int, help="max new tokens per completion [config: 96]")
    ap.add_argument("--lr", type=float, help="constant learning rate [config: 2e-5]")
    ap.add_argument("--loss-type", choices=["grpo", "bnpo", "dr_grpo", "dapo"])
    ap.add_argument("--temperature", type=float, help="[config: 0.7]")
    ap.add_argument("--top-p", type=float, help="[config: 0.95]")
    ap.add_argument("--micro-batch", type=int, help="completions per forward [config: 12]")
    ap.add_argument("--eval-examples", type=int, help="held-out val examples [60]")
    ap.add_argument("--eval-new-tokens", type=int, help="[config eval.max_new_tokens: 96]")
    ap.add_argument("--eval-every", type=int, help="also evaluate every N steps (0: end only) [10]")
    ap.add_argument("--model", help="[smollm2-135m]")
    ap.add_argument(
        "--config", help="asrl config for rewards, format, data, SFT [configs/demo.yaml]"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of --config for the GRPO runs and evaluations, both sides "
        "(e.g. reward.correctness=math_verify); stage 0's SFT uses the config as it is",
    )
    ap.add_argument("--records", type=int, help="synthetic records for stage 0 [700]")
    ap.add_argument("--data-seed", type=int, default=0, help="synthetic generator seed [0]")
    ap.add_argument("--sft-epochs", type=int, help="SFT epochs for the start adapter [2]")
    ap.add_argument("--work", help="cache and scratch directory [runs/grpo_learns]")
    ap.add_argument("--start", help="start from this PEFT adapter directory instead of SFT")
    ap.add_argument("--sides", default="asrl,trl", help="asrl,trl (either or both)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="both sides [auto]")
    ap.add_argument("--threads", type=int, help="torch threads, both sides [torch's default]")
    ap.add_argument("--out", help="where the JSON and the plot go [docs; --smoke: --work]")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, 1 seed (CI)")
    for hidden in ("--worker", "--plan", "--adapter", "--data"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--base-seed", type=int, default=0, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if not a.worker:
        resolve(a)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.worker:
        print_result(WORKERS[a.worker](a))
        return
    wall = time.perf_counter()
    stage0(a)
    cfg = run_config(a)
    splits = load_splits(cfg)
    if len(splits["val"]) < a.eval_examples:
        raise SystemExit(
            f"only {len(splits['val'])} val examples in {a.data}, fewer than --eval-examples "
            f"{a.eval_examples}: raise --records (or lower --eval-examples)"
        )
    start = start_eval(a, cfg, splits["val"])
    pct = 100 * start["correctness"]
    print(f"start adapter {a.adapter}: held-out correctness {pct:.1f}% (n = {start['n']})")

    runs: list[dict] = []
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        rng = random.Random(f"grpo_learns:{seed}")  # the seed's questions, for both sides
        steps = [
            sorted(ex.id for ex in rng.sample(splits["train"], a.questions)) for _ in range(a.steps)
        ]
        plan = Path(a.work) / f"plan-seed{seed}.json"
        plan.write_text(json.dumps({"seed": seed, "steps": steps}) + "\n")
        for side in a.sides:  # alternate within the run: asrl s0, trl s0, asrl s1, ...
            t = time.perf_counter()
            r = run_child(__file__, side, child_argv(a, seed, plan))
            r["child_wall_s"] = time.perf_counter() - t
            runs.append(r)
            print(
                f"  {side} seed {seed}: correctness {100 * r['evals'][-1]['correctness']:.1f}%, "
                f"reward {r['steps'][0]['reward']:.3f} -> {r['steps'][-1]['reward']:.3f}, "
                f"GRPO {r['grpo_seconds']:.1f} s (child {r['child_wall_s']:.0f} s)",
                flush=True,
            )

    info = machine()
    result = report(a, info, start, runs)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"grpo_learns-{info['date'][:10]}"
    settings = {
        k: getattr(a, k)
        for k in (
            *CHILD_KEYS,
            "steps",
            "seeds",
            "records",
            "data_seed",
            "sft_epochs",
            "start",
            "sides",
        )
    }
    doc = {"machine": info, "settings": settings, "start": start, **result, "runs": runs}
    text = json.dumps(finite_or_none(doc), indent=1, allow_nan=False)
    stem.with_suffix(".json").write_text(text + "\n")
    plot(runs, start, a.sides, stem.with_suffix(".png"))
    print(f"\nwrote {stem}.json and {stem}.png ({time.perf_counter() - wall:.0f} s in all)")


if __name__ == "__main__":
    sys.exit(main())
