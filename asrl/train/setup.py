"""Building a run: the output directory, the starting dataset, the model (and a
``model.adapter`` start), rewards, optimizers, the method, and a resumed run's state."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from asrl import rollout as rollout_engine
from asrl.config import Config, ConfigError
from asrl.data.live import LiveDataset
from asrl.data.render import TokenizedCache
from asrl.data.sources import JsonlFile, open_source
from asrl.data.writer import write_synthetic
from asrl.methods import make_method
from asrl.model.adapter import check_compatible, load_adapter, resolve_adapter
from asrl.model.loading import load_policy
from asrl.parallel import distributed, zero
from asrl.phases.common import StepGuard
from asrl.rewards.builtin import RewardSet
from asrl.tracking.metrics import MetricsLog, console, write_json
from asrl.tracking.trackers import make_trackers
from asrl.train.checkpoint import latest_checkpoint, load_checkpoint
from asrl.train.run import Run
from asrl.train.state import EarlyStopping, seed_everything


def prepare_output(cfg: Config, resume: bool) -> Path:
    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # one per process: several may check at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir: cannot write to {out}: {e}") from e
    if not resume and (out / "metrics.jsonl").exists():
        raise ConfigError(
            f"output_dir: {out} already holds a run; pass --resume to continue it, "
            "or choose another -o"
        )
    return out


def ensure_dataset(cfg: Config) -> None:
    """Write the synthetic starting dataset if asked to; fail early on a missing file."""
    path = Path(cfg.data.path)
    if path.exists() or not isinstance(open_source(cfg.data.path, cfg.data), JsonlFile):
        return  # an existing file or directory, or a SQLite table (a writer may create it)
    if cfg.data.generate.count > 0:
        n = write_synthetic(
            path,
            cfg.data.generate.count,
            cfg.data.generate.seed,
            cfg.data.generate.mix,
            cfg.format.spec(),
        )
        console(f"data: wrote {n} synthetic records to {path}")
        return
    raise ConfigError(
        f"data.path: {path} does not exist (create it, e.g. `asrl data generate --to {path} "
        "--count 200`, or set data.generate.count)"
    )


def build_run(cfg: Config, resume: bool = False) -> tuple[Run, int]:
    """Set up the run (model, data, optimizers); returns it and the last completed epoch."""
    d = distributed.current()
    out = prepare_output(cfg, resume)
    ckpt = latest_checkpoint(out / "checkpoints") if resume else None
    start = None
    if cfg.model.adapter and ckpt is None:  # a resumed run continues from its own checkpoint
        start = resolve_adapter(cfg.model.adapter)  # small files only: fails before the model
        check_compatible(start, cfg.model, cfg.seed)
    d.barrier()  # every process has checked the directory before the main one writes to it
    if d.is_main:
        ensure_dataset(cfg)
        write_json(out / "config.json", cfg.to_dict())
    d.barrier()
    seed_everything(cfg.seed)
    fmt = cfg.format.spec()
    # before the model loads: an LLM judge (reward.judge) is probed here, so a wrong URL
    # fails in seconds
    rewards = RewardSet.from_config(cfg.reward, fmt)
    policy = load_policy(cfg.model, seed=cfg.seed)
    if start is not None:
        load_adapter(policy, start)  # weights only: the optimizers below start fresh
        console(f"model.adapter: starting from {start.weights_dir} ({start.kind})")
    source = open_source(cfg.data.path, cfg.data, fmt)
    quarantine = out / "quarantine.jsonl" if d.is_main else None
    dataset = LiveDataset([source], cfg.data.split, quarantine=quarantine)
    d.broadcast_params(policy.trainable_parameters())  # the same starting adapter everywhere
    if d.sharded:  # an FSDP launch: split the base model across the processes (FSDP2)
        policy.shard()
    params = policy.trainable_parameters()  # sharded: DTensors now
    line = rollout_engine.attach(policy, cfg.rollout)  # decodes GRPO rounds and evaluations
    if d.is_main:
        console(line)
    # Two optimizers over the same LoRA weights: Adam's moment estimates of the SFT loss
    # would mis-scale GRPO steps (and back), whose gradients differ by orders of magnitude.
    optimizers = {
        "sft": torch.optim.AdamW(params, lr=cfg.sft.lr, weight_decay=cfg.sft.weight_decay),
        "grpo": torch.optim.AdamW(params, lr=cfg.grpo.lr, weight_decay=0.0),
    }
    stopper = EarlyStopping(
        cfg.schedule.early_stopping_metric, cfg.schedule.early_stopping_mode, cfg.schedule.patience
    )
    run = Run(
        cfg,
        out,
        policy,
        dataset,
        rewards,
        MetricsLog(
            out / "metrics.jsonl",
            out / "samples.jsonl",
            make_trackers(cfg.report_to, out, cfg.to_dict()) if d.is_main else [],
            write=d.is_main,
        ),
        optimizers,
        stopper,
        make_method(cfg.schedule, cfg.seed),
        guard=StepGuard(cfg.train.max_bad_steps_in_row),
        tokenized=TokenizedCache(policy.tokenizer, cfg.data.max_length, cfg.data.system_prompt),
    )
    run.start_adapter = start.record() if start is not None else None
    start_epoch = 0
    if ckpt is not None:
        state = load_checkpoint(ckpt, policy, optimizers)
        run.load_state_dict(state)
        start_epoch = state["epoch"]
        where = f"epoch {start_epoch} complete" + (
            f", {run.resume_phases} phase(s) of epoch {start_epoch + 1} done"
            if run.resume_phases
            else ""
        )
        console(f"resumed from {ckpt} ({where})")
    elif resume:
        console(f"resume: no checkpoint in {out / 'checkpoints'} yet; starting from the beginning")
    if d.zero_stage:  # a DeepSpeed launch: its ZeRO engine takes over the optimizer steps
        # (built now, from the states a resumed run loaded into the plain AdamWs)
        run.optimizers = zero.wrap(policy.model, optimizers, d.world)
    if resume:
        # drop what was logged after the checkpoint: that work is redone, and logged once
        # (trackers too: TensorBoard's files lose the events past that point)
        if ckpt is not None:
            run.metrics.reload(state["metrics_lines"], state.get("sample_lines", 0))
        else:
            run.metrics.reload(0, 0)
    return run, start_epoch
