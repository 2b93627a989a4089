"""``train(cfg)``: the controller. It reads like the algorithm; phases and schedules do the work.

Each epoch: refresh the data -> for each phase the schedule names (ASRL: SFT then GRPO):
run it (a runner from asrl.phases.registry), evaluate on held-out data -> checkpoint ->
early-stop check. ``schedule.time_budget_s`` ends the run at the first phase boundary past
the budget. Every run that ends (all epochs, early stop, budget) then evaluates once on the
test split, which nothing before has looked at.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asrl import distributed, zero
from asrl.checkpoint import gather_full, latest_checkpoint, load_checkpoint, save_checkpoint
from asrl.config import Config, ConfigError
from asrl.data.live import LiveDataset
from asrl.data.render import TokenizedCache
from asrl.data.sources import JsonlFile, open_source, write_synthetic
from asrl.data.synthetic import generate_records
from asrl.evaluation import evaluate
from asrl.interrupt import Interrupted, graceful_stop
from asrl.interrupt import check as check_interrupt
from asrl.models import Policy, load_policy
from asrl.phases.common import StepGuard, TrainingDiverged, guarded_steps
from asrl.phases.grpo import PassRates
from asrl.phases.registry import PHASES, sft_grad_norm_probe
from asrl.rewards import RewardError, RewardSet
from asrl.schedules import Schedule, make_schedule
from asrl.start import check_compatible, load_adapter, resolve_adapter
from asrl.trackers import make_trackers
from asrl.tracking import MetricsLog, console, epoch_line, pct, write_json
from asrl.types import PhaseResult

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: Any) -> int:
    """A seed from (seed, epoch, phase, ...): reproducible and independent per use."""
    return random.Random(":".join(map(str, parts))).getrandbits(31)


class NoTrainingData(ConfigError):
    """A phase would have nothing to train on (no usable train record, or every one longer
    than data.max_length): the run stops before the model works, saying what to change."""


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

    def end_epoch(self) -> bool:
        """Close the epoch; True when training should stop."""
        self.bad_epochs = 0 if self.improved_this_epoch else self.bad_epochs + 1
        self.improved_this_epoch = False
        return self.bad_epochs >= self.patience


@dataclass
class Run:
    """Everything one training run holds."""

    cfg: Config
    out: Path
    policy: Policy
    dataset: LiveDataset
    rewards: RewardSet
    metrics: MetricsLog
    optimizers: dict[str, torch.optim.Optimizer]
    stopper: EarlyStopping
    schedule: Schedule
    ledger: dict[str, float] = field(default_factory=dict)
    data_sizes: list[dict[str, int]] = field(default_factory=list)
    phase_counts: dict[tuple[int, str], int] = field(default_factory=dict)
    guard: StepGuard = field(default_factory=StepGuard)  # non-finite steps, across phases
    tokenized: TokenizedCache | None = None  # train examples tokenized once per run
    resume_phases: int = 0  # phases of the next epoch already done (mid-epoch resume)
    pass_rates: PassRates = field(default_factory=PassRates)  # train records' GRPO pass rates
    start_adapter: dict[str, Any] | None = None  # model.adapter's record (summary.json)
    # training time (schedule.time_budget_s): seconds spent before this process (from the
    # checkpoint resumed), plus this process's since start_clock()
    train_s_before: float = 0.0
    clock_start: float | None = None

    def start_clock(self) -> None:
        self.clock_start = time.perf_counter()

    def elapsed_s(self) -> float:
        """Training seconds so far: the epoch loops of this process and the ones it resumes."""
        now = 0.0 if self.clock_start is None else time.perf_counter() - self.clock_start
        return self.train_s_before + now

    def over_budget(self, elapsed: float) -> bool:
        """Whether ``elapsed`` has spent schedule.time_budget_s (the main process decides,
        so every process stops at the same boundary)."""
        budget = self.cfg.schedule.time_budget_s
        if budget is None:  # the same config everywhere: nothing to agree on
            return False
        return distributed.current().broadcast(elapsed >= budget)

    def inject_data(self, epoch: int) -> None:
        """Experiment aid (``data.inject``): append synthetic records as a writer would."""
        inj = self.cfg.data.inject
        if inj.at_epoch != epoch or inj.at_epoch <= 0:
            return
        path = Path(self.cfg.data.path)
        if not isinstance(open_source(path, self.cfg.data), JsonlFile):
            raise ConfigError("data.inject: needs data.path to be a JSONL file")
        recs = generate_records(inj.count, seed=inj.seed, fmt=self.cfg.format.spec(), mix=inj.mix)
        if recs and f'"{recs[0]["id"]}"' in path.read_text(encoding="utf-8"):
            return  # already appended (a resumed run redoing this epoch)
        with path.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        console(f"data: injected {len(recs)} '{inj.mix}' records (data.inject)")

    def refresh_data(self, epoch: int) -> dict[str, Any]:
        d = distributed.current()
        if d.is_main:  # several processes: the main one reads, the others take what it took
            self.inject_data(epoch)
            res = self.dataset.refresh(keep_added=d.active)
        res = d.broadcast(res if d.is_main else None)
        if not d.is_main:
            self.dataset.absorb(res.added)
        res.added = []
        sizes = self.dataset.sizes()
        rec = {
            "data/version": self.dataset.version,
            "data/new_examples": res.new,
            "data/rejected": res.rejected,
            "data/duplicates": res.duplicates,
            "data/train_size": sizes["train"],
            "data/val_size": sizes["val"],
            "data/test_size": sizes["test"],
        }
        self.data_sizes.append({"epoch": epoch, **sizes})
        if res.rejected:
            console(f"data: {res.rejected} bad record(s) quarantined in {self.dataset.quarantine}")
        self.check_trainable()  # before anything is logged: a fixed rerun needs no --resume
        return self.metrics.log(epoch, "data", rec)

    def check_trainable(self) -> None:
        """Raise :class:`NoTrainingData` when the phases would train on nothing.

        The train split only grows, so a run that passes once passes at every later epoch.
        """
        cfg, train = self.cfg, self.dataset.train
        if not train:
            bad = self.dataset.rejected_total
            where = f", see {self.dataset.quarantine}" if bad and self.dataset.quarantine else ""
            raise NoTrainingData(
                f"data.path: no train examples in {cfg.data.path} ({len(self.dataset)} usable "
                f"record(s) in val/test, {bad} bad record(s) quarantined{where}); add records "
                "(asrl data add / asrl data generate) or point data.path at a dataset"
            )
        if self.schedule.runs_sft and self.tokenized is not None:
            kept, dropped = self.tokenized(train)
            if not kept:
                shortest = min(self.tokenized.length(i) for i in dropped)
                raise NoTrainingData(
                    f"data.max_length: all {len(dropped)} train example(s) are longer than "
                    f"{cfg.data.max_length} tokens (prompt + response in the chat template; the "
                    f"shortest has {shortest}), so SFT has nothing to train on; raise "
                    f"data.max_length to at least {shortest}, or use shorter records"
                )

    def run_phase(self, phase: str, epoch: int) -> PhaseResult:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")
        # the n-th run of a phase within an epoch (adaptive may repeat one) gets its own seeds
        n = self.phase_counts[(epoch, phase)] = self.phase_counts.get((epoch, phase), 0) + 1
        again = () if n == 1 else (n,)
        rng = random.Random(derived_seed(self.cfg.seed, epoch, phase, *again))
        seed = derived_seed(self.cfg.seed, epoch, "rollout", *again)
        check_interrupt()
        self.guard.phase = phase
        skipped, reward_errors = self.guard.skipped, self.rewards.errors
        with guarded_steps(self.guard):
            result = PHASES[phase](self, epoch, rng, seed, f"epoch {epoch} {phase}")
        result.metrics["train/skipped_steps"] = self.guard.skipped - skipped
        if phase != "sft":  # the phases that score rollouts
            result.metrics["train/reward_errors"] = self.rewards.errors - reward_errors
        # a few rollouts (prompt, completion, reward and its components) each phase
        self.metrics.log_samples(epoch, phase, result.samples)
        if self.guard.skipped > skipped:
            console(f"{phase}: skipped {self.guard.skipped - skipped} non-finite step(s)")
        for key in ("examples_seen", "tokens_trained", "tokens_generated", "seconds"):
            self.ledger[key] = self.ledger.get(key, 0) + getattr(result, key)
        result.metrics.update(
            {
                "time/phase_s": result.seconds,
                "compute/examples_seen": result.examples_seen,
                "compute/tokens_trained": result.tokens_trained,
                "compute/tokens_generated": result.tokens_generated,
            }
        )
        self.metrics.log(epoch, phase, result.metrics)
        return result

    def probe_sft_grad_norm(self, epoch: int, slot: int) -> float:
        """SFT gradient norm on one train batch, no step (the adaptive schedule's signal)."""
        rng = random.Random(derived_seed(self.cfg.seed, epoch, "probe", slot))
        norm, tokens = sft_grad_norm_probe(
            self.policy,
            self.dataset.train,
            self.cfg.sft.batch_size,
            self.cfg.data.max_length,
            rng,
            self.cfg.data.system_prompt,
        )
        self.ledger["probe_tokens"] = self.ledger.get("probe_tokens", 0) + tokens
        return norm

    def evaluate(self, epoch: int, after: str) -> dict[str, Any]:
        cfg = self.cfg
        split = self.dataset.splits[cfg.eval.split]
        m, samples = evaluate(
            self.policy,
            split,
            cfg.format.spec(),
            self.rewards,
            cfg.eval,
            cfg.data.max_length,
            cfg.data.system_prompt,
        )
        m["eval/after"] = after
        self.metrics.log_samples(epoch, "eval", samples[: cfg.eval.samples_to_log], after=after)
        rec = self.metrics.log(epoch, "eval", m)
        self.stopper.observe(m.get(cfg.schedule.early_stopping_metric))
        return rec

    def evaluate_test(self, epoch: int) -> dict[str, Any] | None:
        """The one final evaluation, on the test split: the eval's metrics as ``test/...``
        in a ``phase: test`` line. None (and a line with ``test/n: 0``) when it is empty."""
        cfg = self.cfg
        cap = cfg.eval.test_max_examples or cfg.eval.max_examples
        m, samples = evaluate(
            self.policy,
            self.dataset.splits["test"],
            cfg.format.spec(),
            self.rewards,
            replace(cfg.eval, max_examples=cap),
            cfg.data.max_length,
            cfg.data.system_prompt,
        )
        if not m:
            console("test: the test split is empty, so there is no final test evaluation")
            self.metrics.log(epoch, "test", {"test/n": 0})
            return None
        rec = {test_key(k): v for k, v in m.items()}
        self.metrics.log_samples(epoch, "test", samples[: cfg.eval.samples_to_log])
        return self.metrics.log(epoch, "test", rec)

    def checkpoint(
        self,
        epoch: int,
        phases_done: int | None = None,
        elapsed_s: float | None = None,
        force: bool = False,
    ) -> None:
        """Save after a phase of ``epoch`` (``phases_done`` so far) or at its end (None).

        Names sort in time order: ``epoch-0002.p1`` (epoch 3, one phase done) comes after
        ``epoch-0002`` and before ``epoch-0003``. ``elapsed_s``: the training time to keep
        (default: now). ``force``: write a phase checkpoint under ``every: epoch`` too (the
        run stops there).
        """
        every = self.cfg.checkpoint.every
        if every == "none":
            return
        if phases_done is not None and (
            (every != "phase" and not force) or not self.schedule.resumable_mid_epoch
        ):
            return
        complete = epoch if phases_done is None else epoch - 1
        name = f"epoch-{complete:04d}" + ("" if phases_done is None else f".p{phases_done}")
        state = {
            "epoch": complete,
            "phases_done": phases_done or 0,
            "metrics_lines": len(self.metrics.records),
            "sample_lines": self.metrics.sample_lines,
            "data": self.dataset.state(),
            "stopper": {
                "best": self.stopper.best,
                "bad_epochs": self.stopper.bad_epochs,
                "improved": self.stopper.improved_this_epoch,
            },
            "ledger": self.ledger,
            "data_sizes": self.data_sizes,
            "schedule": self.schedule.state(),
            "pass_rates": self.pass_rates.state(),
            "elapsed_s": self.elapsed_s() if elapsed_s is None else elapsed_s,
            "start_adapter": self.start_adapter,
        }
        d = distributed.current()
        # sharded or ZeRO: every process takes part in gathering what the main one writes
        gather = self.policy.sharded or d.zero_stage
        full = gather_full(self.policy, self.optimizers) if gather else None
        if d.is_main:
            save_checkpoint(
                self.out / "checkpoints",
                name,
                self.policy,
                self.optimizers,
                state,
                self.cfg.checkpoint.keep_last,
                full,
            )
        d.barrier()  # nobody runs ahead of a checkpoint that is still being written


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


def test_key(key: str) -> str:
    """An eval metric's name for the test split: ``eval/correctness`` -> ``test/correctness``
    (``eval/val_loss`` -> ``test/val_loss``: the same loss, on test), ``time/eval_s`` ->
    ``time/test_s``."""
    if key == "time/eval_s":
        return "time/test_s"
    return "test/" + key.removeprefix("eval/")


def summarize(
    run: Run,
    epochs_run: int,
    stopped_early: bool,
    stopped: str | None = None,
    test: dict[str, Any] | None = None,
    elapsed_s: float | None = None,
) -> dict[str, Any]:
    evals = run.metrics.evals()
    fmt90 = next(
        (
            e["epoch"]
            for e in evals
            if (e.get("eval/format_accuracy") or 0) >= 0.9 and e["epoch"] > 0
        ),
        None,
    )
    metric, mode = run.cfg.schedule.early_stopping_metric, run.cfg.schedule.early_stopping_mode
    scored = [e for e in evals if e.get(metric) is not None]
    best = (min if mode == "min" else max)(scored, key=lambda e: e[metric]) if scored else None
    return {
        "method": run.cfg.schedule.method,
        "seed": run.cfg.seed,
        "epochs_run": epochs_run,
        "stopped_early": stopped_early,
        "epochs_to_format_90": fmt90,
        "initial": evals[0] if evals else None,
        "final": evals[-1] if evals else None,
        "best": best,
        "compute": run.ledger,
        "data_sizes": run.data_sizes,
        # how the run ended: null (all epochs), "early_stopping" or "time_budget"
        "stopped": stopped,
        "budget_s": run.cfg.schedule.time_budget_s,
        "elapsed_s": run.elapsed_s() if elapsed_s is None else elapsed_s,
        # the one evaluation on the test split (null when that split is empty)
        "test": None if test is None else {**test, "n": int(test.get("test/n", 0))},
        "start_adapter": run.start_adapter,
    }


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
        make_schedule(cfg.schedule, cfg.seed),
        guard=StepGuard(cfg.train.max_bad_steps_in_row),
        tokenized=TokenizedCache(policy.tokenizer, cfg.data.max_length, cfg.data.system_prompt),
    )
    run.start_adapter = start.record() if start is not None else None
    start_epoch = 0
    if ckpt is not None:
        state = load_checkpoint(ckpt, policy, optimizers)
        source.restore_until(state["data"]["cursors"][source.name])
        dataset.refresh()  # re-read exactly what the checkpointed run had seen
        dataset.version = state["data"]["version"]
        stopper.best = state["stopper"]["best"]
        stopper.bad_epochs = state["stopper"]["bad_epochs"]
        stopper.improved_this_epoch = state["stopper"].get("improved", False)
        run.ledger, run.data_sizes = state["ledger"], state["data_sizes"]
        run.schedule.restore(state.get("schedule", {}))
        run.pass_rates.restore(state.get("pass_rates", {}))
        run.train_s_before = float(state.get("elapsed_s", 0.0))
        run.start_adapter = state.get("start_adapter")
        start_epoch, run.resume_phases = state["epoch"], state.get("phases_done", 0)
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


def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Train with ``cfg.schedule.method``; returns the summary also written to summary.json.

    Raises :class:`Interrupted` after SIGTERM / Ctrl-C (at the next optimizer step or phase
    boundary), :class:`TrainingDiverged` or :class:`RewardError`; each message names the
    latest (phase-boundary) checkpoint, which ``--resume`` continues from.
    """
    d = distributed.init()  # joins the process group under `accelerate launch`, else no-op
    cfg.model.device = distributed.device_for(d, cfg.model.device)
    with graceful_stop():
        run, start_epoch = build_run(cfg, resume)
        try:
            return _train(run, start_epoch)
        except (Interrupted, TrainingDiverged, RewardError) as e:
            ckpt = latest_checkpoint(run.out / "checkpoints")
            saved = (
                f"the latest checkpoint is {ckpt}"
                if ckpt
                else "no phase had completed, so no checkpoint exists yet"
            )
            e.args = (f"{e.args[0] if e.args else type(e).__name__}; {saved}",)
            raise
        finally:
            run.metrics.close(failed=sys.exc_info()[0] is not None)  # the exception in flight


def _train(run: Run, start_epoch: int) -> dict[str, Any]:
    cfg = run.cfg
    schedule = run.schedule
    d = distributed.current()
    console(
        f"asrl: method={schedule.name} model={cfg.model.name} device={run.policy.device} "
        f"autocast={run.policy.autocast_dtype} out={run.out}"
        + (f" processes={d.world}" if d.world > 1 else "")
        + (" sharded (FSDP2)" if d.sharded else "")
        + (f" DeepSpeed ZeRO-{d.zero_stage}" if d.zero_stage else "")
    )
    if start_epoch == 0 and not run.resume_phases:  # a fresh start (not one inside epoch 1)
        data = run.refresh_data(0)
        console(
            f"data: {data['data/train_size']} train / {data['data/val_size']} val / "
            f"{data['data/test_size']} test from {cfg.data.path}"
        )
        e0 = run.evaluate(0, "init")
        console(epoch_line(0, [e0], data, e0.get("time/eval_s", 0.0)))
    run.start_clock()  # training time (schedule.time_budget_s) counts from here
    budget = cfg.schedule.time_budget_s
    reached = start_epoch + (1 if run.resume_phases else 0)  # the last epoch a phase ran in
    stopped: str | None = None  # None (every epoch ran), "early_stopping", "time_budget"
    spent = run.elapsed_s()
    epochs = range(start_epoch + 1, cfg.schedule.epochs + 1)
    # the budget is checked where a phase ends; a run that starts with it spent (a budget
    # of 0: evaluate only) or is resumed once it was spent stops before any phase
    if run.over_budget(run.train_s_before):
        stopped, epochs = "time_budget", range(0)
    for epoch in epochs:
        check_interrupt()
        t0 = time.perf_counter()
        skip, run.resume_phases = run.resume_phases, 0
        if skip:  # resuming mid-epoch: this epoch's data and first phases are already done
            data = next(r for r in reversed(run.metrics.records) if r["phase"] == "data")
            evals = [r for r in run.metrics.records if r["epoch"] == epoch and r["phase"] == "eval"]
        else:
            data, evals = run.refresh_data(epoch), []
        names = schedule.phases(epoch, run)
        last = len(names) if isinstance(names, list) else None
        for i, phase in enumerate(names):
            if i < skip:
                continue
            reached = epoch
            schedule.observe(phase, run.run_phase(phase, epoch))
            evals.append(run.evaluate(epoch, after=phase))
            if i + 1 != last:  # the epoch-end checkpoint follows the last phase
                spent = run.elapsed_s()
                # a budget stop needs a checkpoint to resume from: mid-epoch only where the
                # schedule can resume mid-epoch (the adaptive one stops at epoch ends)
                over = schedule.resumable_mid_epoch and run.over_budget(spent)
                run.checkpoint(epoch, phases_done=i + 1, elapsed_s=spent, force=over)
                if over:
                    stopped = "time_budget"
                    break
        if stopped is None:
            end_early = run.stopper.end_epoch()
            spent = run.elapsed_s()
            run.checkpoint(epoch, elapsed_s=spent)
            if end_early:
                stopped = "early_stopping"
            elif run.over_budget(spent):
                stopped = "time_budget"
        console(epoch_line(epoch, evals, data, time.perf_counter() - t0))
        if stopped == "early_stopping":
            console(
                f"early stop: no improvement in {cfg.schedule.early_stopping_metric} for "
                f"{cfg.schedule.patience} epochs"
            )
        if stopped is not None:
            break
    if stopped == "time_budget":
        console(
            f"time budget: {spent:.1f}s of training spent (schedule.time_budget_s={budget}); "
            f"stopped at a phase boundary of epoch {reached}"
        )
    test = run.evaluate_test(reached)  # once, after everything that chose or stopped
    summary = summarize(run, reached, stopped == "early_stopping", stopped, test, spent)
    if distributed.current().is_main:
        write_json(run.out / "summary.json", summary)
    final = summary["final"] or {}
    tested = (
        f"test (n={summary['test']['n']}): format {pct(test.get('test/format_accuracy'))}, "
        f"correct {pct(test.get('test/correctness'))}"
        if test is not None
        else "test: none (empty test split)"
    )
    console(
        f"done: val format {pct(final.get('eval/format_accuracy'))}, correct "
        f"{pct(final.get('eval/correctness'))}; {tested}"
        + (f"; stopped: {stopped}" if stopped else "")
        + f"; summary in {run.out / 'summary.json'}"
    )
    return summary
