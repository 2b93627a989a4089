"""``train(cfg)``: the controller. It reads like the algorithm; methods and phases do the work.

Each epoch: refresh the data -> for each phase the method names (ASRL: SFT then GRPO):
run it (the method runs it: asrl.methods), evaluate on held-out data -> checkpoint ->
early-stop check. ``schedule.time_budget_s`` ends the run at the first phase boundary past
the budget. Every run that ends (all epochs, early stop, budget) then evaluates once on the
test split, which nothing before has looked at.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from asrl.config import Config
from asrl.errors import Interrupted, RewardError, TrainingDiverged
from asrl.parallel import distributed
from asrl.parallel.interrupt import check as check_interrupt
from asrl.parallel.interrupt import graceful_stop
from asrl.preflight import preflight
from asrl.tracking.metrics import console, epoch_line, pct, write_json
from asrl.train.checkpoint import latest_checkpoint
from asrl.train.run import Run
from asrl.train.setup import build_run

log = logging.getLogger(__name__)


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


def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Train with ``cfg.schedule.method``; returns the summary also written to summary.json.

    Raises :class:`Interrupted` after SIGTERM / Ctrl-C (at the next optimizer step or phase
    boundary), :class:`TrainingDiverged` or :class:`RewardError`; each message names the
    latest (phase-boundary) checkpoint, which ``--resume`` continues from.
    """
    preflight(cfg)  # the checks that import or touch the disk: before the model loads
    d = distributed.init()  # joins the process group under `accelerate launch`, else no-op
    cfg.model.device = distributed.device_for(d, cfg.model.device)
    try:
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
    finally:  # every process leaves the group together, after the main one has written all
        distributed.close(clean=sys.exc_info()[0] is None)


def _train(run: Run, start_epoch: int) -> dict[str, Any]:
    cfg = run.cfg
    method = run.method
    d = distributed.current()
    console(
        f"asrl: method={method.name} model={cfg.model.name} device={run.policy.device} "
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
        names = method.phases(epoch, run)
        last = len(names) if isinstance(names, list) else None
        for i, phase in enumerate(names):
            if i < skip:
                continue
            reached = epoch
            method.observe(phase, run.run_phase(phase, epoch))
            evals.append(run.evaluate(epoch, after=phase))
            if i + 1 != last:  # the epoch-end checkpoint follows the last phase
                spent = run.elapsed_s()
                # a budget stop needs a checkpoint to resume from: mid-epoch only where the
                # schedule can resume mid-epoch (the adaptive one stops at epoch ends)
                over = method.resumable_mid_epoch and run.over_budget(spent)
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
