"""One training run's state and the operations the controller calls on it: refresh the data,
run a phase (through the method, with a typed :class:`PhaseContext`), evaluate, checkpoint.
Its state saves and restores itself (``state_dict`` / ``load_state_dict``)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from asrl.config import Config, ConfigError
from asrl.data.live import LiveDataset
from asrl.data.render import TokenizedCache, response_lengths
from asrl.data.sources import JsonlFile, open_source
from asrl.data.synthetic import generate_records
from asrl.data.writer import append_records
from asrl.errors import NoTrainingData
from asrl.methods import Method, PhaseContext
from asrl.model.loading import Policy
from asrl.parallel import distributed
from asrl.parallel.interrupt import check as check_interrupt
from asrl.phases.common import StepGuard, guarded_steps
from asrl.phases.selection import PassRates, SFTHistory
from asrl.phases.sft import sft_grad_norm_probe
from asrl.rewards.builtin import RewardSet
from asrl.tracking.metrics import MetricsLog, console
from asrl.train.checkpoint import gather_full, save_checkpoint
from asrl.train.evaluation import evaluate
from asrl.train.state import EarlyStopping, derived_seed, test_key
from asrl.types import PhaseResult


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
    method: Method  # schedule.method's object: which phases, and how they run
    ledger: dict[str, float] = field(default_factory=dict)
    data_sizes: list[dict[str, int]] = field(default_factory=list)
    phase_counts: dict[tuple[int, str], int] = field(default_factory=dict)
    guard: StepGuard = field(default_factory=StepGuard)  # non-finite steps, across phases
    tokenized: TokenizedCache | None = None  # train examples tokenized once per run
    resume_phases: int = 0  # phases of the next epoch already done (mid-epoch resume)
    pass_rates: PassRates = field(default_factory=PassRates)  # train records' GRPO pass rates
    sft_history: SFTHistory = field(default_factory=SFTHistory)  # epoch of each record's last SFT
    start_adapter: dict[str, Any] | None = None  # model.adapter's record (summary.json)
    # training time (schedule.time_budget_s): seconds spent before this process (from the
    # checkpoint resumed), plus this process's since start_clock()
    train_s_before: float = 0.0
    clock_start: float | None = None
    lengths_checked: bool = False  # warn_long_references ran (once per process)

    def state_dict(self) -> dict[str, Any]:
        """The run's state beyond the weights and optimizers, as checkpoints keep it."""
        return {
            "metrics_lines": len(self.metrics.records),
            "sample_lines": self.metrics.sample_lines,
            "data": self.dataset.state(),
            "stopper": self.stopper.state_dict(),
            "ledger": self.ledger,
            "data_sizes": self.data_sizes,
            "schedule": self.method.state(),
            "pass_rates": self.pass_rates.state(),
            "sft_history": self.sft_history.state(),
            "elapsed_s": self.elapsed_s(),
            "start_adapter": self.start_adapter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` gave: the data re-read up to the checkpoint's
        cursors, the stopper, ledger, method, pass rates, the training time spent."""
        for src in self.dataset.sources:
            src.restore_until(state["data"]["cursors"][src.name])
        self.dataset.refresh()  # re-read exactly what the checkpointed run had seen
        self.dataset.version = state["data"]["version"]
        self.stopper.load_state_dict(state["stopper"])
        self.ledger, self.data_sizes = state["ledger"], state["data_sizes"]
        self.method.restore(state.get("schedule", {}))
        self.pass_rates.restore(state.get("pass_rates", {}))
        self.sft_history.restore(state.get("sft_history", {}))
        self.train_s_before = float(state.get("elapsed_s", 0.0))
        self.start_adapter = state.get("start_adapter")
        self.resume_phases = state.get("phases_done", 0)

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
        # under the writer lock, as `asrl data add` writes; once: a resumed run redoing this
        # epoch finds them there already
        if append_records(path, recs, once=True):
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
        self.warn_long_references()
        return self.metrics.log(epoch, "data", rec)

    def warn_long_references(self, sample: int = 1000) -> None:
        """Once per run: say so when train references need more new tokens than completions
        get (grpo/eval.max_new_tokens), since those are cut off before their final answer and
        score as wrong however good the model is. Looks at the first ``sample`` records."""
        if self.lengths_checked or not self.dataset.train:
            return
        self.lengths_checked = True
        cfg = self.cfg
        budgets = {"eval.max_new_tokens": cfg.eval.max_new_tokens}
        if self.method.runs_grpo:
            budgets["grpo.max_new_tokens"] = cfg.grpo.max_new_tokens
        examples = self.dataset.train[:sample]
        lengths = response_lengths(self.policy.tokenizer, examples)
        longest = max(lengths)
        short = {key: n for key, n in budgets.items() if longest > n}
        if not short:
            return
        lowest = min(short.values())
        over = sum(n > lowest for n in lengths)
        console(
            f"data: {over} of {len(examples)} train references ({over / len(examples):.0%}) "
            f"need more than {lowest} new tokens (the longest {longest}, end of turn "
            f"included); {' and '.join(f'{k}={n}' for k, n in short.items())} cut such "
            f"completions off before their answer: raise to {longest} to fit them all"
        )

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
        if self.method.runs_sft and self.tokenized is not None:
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
        # the n-th run of a phase within an epoch (adaptive may repeat one) gets its own seeds
        n = self.phase_counts[(epoch, phase)] = self.phase_counts.get((epoch, phase), 0) + 1
        again = () if n == 1 else (n,)
        rng = random.Random(derived_seed(self.cfg.seed, epoch, phase, *again))
        seed = derived_seed(self.cfg.seed, epoch, "rollout", *again)
        check_interrupt()
        self.guard.phase = phase
        skipped, reward_errors = self.guard.skipped, self.rewards.errors
        with guarded_steps(self.guard):
            result = self.method.run_phase(phase, self.phase_context(epoch, rng, seed, phase))
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

    def phase_context(self, epoch: int, rng: random.Random, seed: int, phase: str) -> PhaseContext:
        """What the phase may use of this run (nothing else of it reaches a phase)."""
        assert self.tokenized is not None
        return PhaseContext(
            self.cfg,
            self.policy,
            self.dataset.train,
            self.rewards,
            self.optimizers,
            self.pass_rates,
            self.tokenized,
            epoch,
            rng,
            seed,
            f"epoch {epoch} {phase}",
            self.sft_history,
            tuple(v for s, v in self.dataset.splits.items() if s != "train"),
        )

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
            (every != "phase" and not force) or not self.method.resumable_mid_epoch
        ):
            return
        complete = epoch if phases_done is None else epoch - 1
        name = f"epoch-{complete:04d}" + ("" if phases_done is None else f".p{phases_done}")
        state = {
            "epoch": complete,
            "phases_done": phases_done or 0,
            **self.state_dict(),
            "elapsed_s": self.elapsed_s() if elapsed_s is None else elapsed_s,
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
