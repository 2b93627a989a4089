"""Value checks of a built :class:`Config` (types are already right): ranges and choices.

Pure: nothing here imports modules named by the config or touches the disk or network;
those checks are ``asrl.preflight``'s.
"""

from __future__ import annotations

import difflib
import string
from collections.abc import Iterable

from asrl.config.schema import (
    ADAPTIVE_SIGNALS,
    AUTOCASTS,
    CHECKPOINT_EVERY,
    CORRECTNESS,
    DTYPES,
    JUDGE_FIELDS,
    LOSS_TYPES,
    ON_ERROR,
    QUESTION_SELECTIONS,
    ROLLOUT_ENGINES,
    SCALE_REWARDS,
    STOPPING_MODES,
    Config,
    DataConfig,
    InjectConfig,
    JudgeConfig,
    RewardConfig,
    ScheduleConfig,
)
from asrl.data.synthetic import MIXES
from asrl.errors import ConfigError
from asrl.tracking.trackers import PACKAGES


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _one_of(value: str, choices: Iterable[str], key: str) -> None:
    """``value`` must be one of ``choices``; the message lists them (one list, one place)."""
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}.{hint}")


def validate(cfg: Config) -> None:
    g, s, d = cfg.grpo, cfg.sft, cfg.data
    _require(
        g.num_generations >= 2,
        "grpo.num_generations",
        "must be >= 2: group advantages "
        "compare completions of the same prompt, one alone has nothing to compare with",
    )
    _require(g.questions_per_epoch >= 1, "grpo.questions_per_epoch", "must be >= 1")
    _one_of(g.loss_type, LOSS_TYPES, "grpo.loss_type")
    _one_of(g.scale_rewards, SCALE_REWARDS, "grpo.scale_rewards")
    _require(g.temperature > 0, "grpo.temperature", "must be > 0")
    _require(0 < g.top_p <= 1, "grpo.top_p", "must be in (0, 1]")
    _require(g.epsilon > 0, "grpo.epsilon", "must be > 0")
    _require(g.beta >= 0, "grpo.beta", "must be >= 0")
    _require(g.steps_per_round >= 1, "grpo.steps_per_round", "must be >= 1")
    _require(g.num_iterations >= 1, "grpo.num_iterations", "must be >= 1 (1: one pass)")
    _require(g.rounds_per_phase >= 1, "grpo.rounds_per_phase", "must be >= 1")
    _require(g.max_resample_rounds >= 0, "grpo.max_resample_rounds", "must be >= 0")
    _one_of(g.question_selection, QUESTION_SELECTIONS, "grpo.question_selection")
    _require(
        g.question_source in ("train", "generator")
        or g.question_source.startswith("reasoning_gym:"),
        "grpo.question_source",
        f"must be train, generator or reasoning_gym:TASK, got {g.question_source!r}",
    )
    _require(0 < g.pass_rate_ema <= 1, "grpo.pass_rate_ema", "must be in (0, 1]")
    _require(g.pass_rate_floor > 0, "grpo.pass_rate_floor", "must be > 0")
    _require(g.micro_batch_size >= 1, "grpo.micro_batch_size", "must be >= 1")
    _require(g.max_new_tokens >= 1, "grpo.max_new_tokens", "must be >= 1")
    _one_of(cfg.rollout.engine, ROLLOUT_ENGINES, "rollout.engine")
    _require(cfg.rollout.max_batch_tokens >= 1, "rollout.max_batch_tokens", "must be >= 1")
    _require(
        0 < cfg.rollout.vllm_gpu_memory_utilization <= 1,
        "rollout.vllm_gpu_memory_utilization",
        "must be in (0, 1]",
    )
    _require(0 <= g.lr_final_ratio <= 1, "grpo.lr_final_ratio", "must be in [0, 1]")
    for key, v in (("sft.lr", s.lr), ("grpo.lr", g.lr)):
        _require(v >= 0, key, "must be >= 0")
    _require(s.batch_size >= 1, "sft.batch_size", "must be >= 1")
    _require(s.grad_accum >= 1, "sft.grad_accum", "must be >= 1")
    _require(
        s.max_examples_per_phase is None or s.max_examples_per_phase >= 1,
        "sft.max_examples_per_phase",
        "must be >= 1 (or null: the whole train split)",
    )
    _require(
        len(d.split) == 3 and all(x >= 0 for x in d.split) and abs(sum(d.split) - 1) < 1e-6,
        "data.split",
        "three non-negative fractions (train, val, test) summing to 1",
    )
    _require(d.max_length >= 8, "data.max_length", "must be >= 8 tokens")
    _require(d.max_line_bytes >= 1, "data.max_line_bytes", "must be >= 1 byte")
    _require(cfg.model.lora.r >= 1, "model.lora.r", "must be >= 1")
    _one_of(cfg.model.autocast, AUTOCASTS, "model.autocast")
    _one_of(cfg.model.dtype, DTYPES, "model.dtype")
    _require(
        cfg.model.dtype == "float32" or cfg.model.autocast == "none",
        "model.dtype",
        "float64 runs without autocast: set model.autocast: none",
    )
    _require(
        len(cfg.format.sections) >= 1 and all(len(p) == 2 and all(p) for p in cfg.format.sections),
        "format.sections",
        "a list of [open, close] tag pairs",
    )
    _require(
        cfg.eval.split == "val",
        "eval.split",
        f"'{cfg.eval.split}': use val. The test split is held out for the one final "
        "evaluation at the end of the run (summary.json 'test'); it never drives early "
        "stopping or the choice of the best epoch",
    )
    _require(cfg.eval.max_examples >= 1, "eval.max_examples", "must be >= 1")
    _require(
        cfg.eval.test_max_examples is None or cfg.eval.test_max_examples >= 1,
        "eval.test_max_examples",
        "must be >= 1 (or null: the same as eval.max_examples)",
    )
    _require(cfg.eval.temperature >= 0, "eval.temperature", "must be >= 0 (0: greedy)")
    _require(0 < cfg.eval.top_p <= 1, "eval.top_p", "must be in (0, 1]")
    _require(cfg.eval.samples_per_example >= 1, "eval.samples_per_example", "must be >= 1")
    _require(
        cfg.schedule.time_budget_s is None or cfg.schedule.time_budget_s >= 0,
        "schedule.time_budget_s",
        "must be >= 0 seconds (0: evaluate only; null: no budget)",
    )
    _require(
        cfg.model.adapter is None or bool(str(cfg.model.adapter).strip()),
        "model.adapter",
        "give a path (a run directory, a checkpoint or an exported adapter), or null",
    )
    _require(cfg.schedule.epochs >= 1, "schedule.epochs", "must be >= 1")
    _require(cfg.schedule.patience >= 1, "schedule.patience", "must be >= 1")
    _one_of(cfg.schedule.early_stopping_mode, STOPPING_MODES, "schedule.early_stopping_mode")
    _validate_schedule(cfg.schedule)
    _validate_inject(cfg.data.inject)
    _validate_source(cfg.data)
    _one_of(cfg.checkpoint.every, CHECKPOINT_EVERY, "checkpoint.every")
    _validate_rewards(cfg.reward)
    _validate_report_to(cfg.report_to)
    _require(cfg.grpo.samples_to_log >= 0, "grpo.samples_to_log", "must be >= 0")
    _require(cfg.train.max_bad_steps_in_row >= 1, "train.max_bad_steps_in_row", "must be >= 1")


def _validate_schedule(s: ScheduleConfig) -> None:
    _require(s.sft_epochs >= 0, "schedule.sft_epochs", "must be >= 0")
    _require(s.stage_epochs >= 1, "schedule.stage_epochs", "must be >= 1")
    _require(s.adaptive_slots >= 1, "schedule.adaptive_slots", "must be >= 1")
    _one_of(s.adaptive_signal, ADAPTIVE_SIGNALS, "schedule.adaptive_signal")
    _require(0 <= s.adaptive_p_min <= 1, "schedule.adaptive_p_min", "must be in [0, 1]")
    for key in ("chord_mu_peak", "chord_mu_valley"):
        _require(0 <= getattr(s, key) <= 1, f"schedule.{key}", "must be in [0, 1]")
    for key in ("chord_warmup_steps", "chord_decay_steps"):
        _require(getattr(s, key) >= 0, f"schedule.{key}", "must be >= 0")
    _require(s.chord_sft_batch_size >= 1, "schedule.chord_sft_batch_size", "must be >= 1")
    _require(s.relift_buffer >= 1, "schedule.relift_buffer", "must be >= 1")


def _validate_inject(inj: InjectConfig) -> None:
    _require(inj.at_epoch >= 0, "data.inject.at_epoch", "must be >= 0 (0: off)")
    _require(inj.count >= 0, "data.inject.count", "must be >= 0")
    _one_of(inj.mix, sorted(MIXES), "data.inject.mix")


def _validate_source(d: DataConfig) -> None:
    rg = d.reasoning_gym
    _require(rg.initial >= 1, "data.reasoning_gym.initial", "must be >= 1")
    _require(rg.per_poll >= 0, "data.reasoning_gym.per_poll", "must be >= 0 (0: a fixed set)")
    _require(rg.size >= 1, "data.reasoning_gym.size", "must be >= 1")


def _validate_rewards(r: RewardConfig) -> None:
    _one_of(r.on_error, ON_ERROR, "reward.on_error")
    _one_of(r.correctness, CORRECTNESS, "reward.correctness")
    _require(r.max_errors >= 1, "reward.max_errors", "must be >= 1")
    _validate_judge(r.judge)
    for i, c in enumerate(r.custom):
        _require(":" in c.path, f"reward.custom[{i}].path", "write it as 'package.module:function'")


def _validate_report_to(report_to: list[str]) -> None:
    for i, name in enumerate(report_to):
        _one_of(name, [*PACKAGES, "none"], f"report_to[{i}]")
    _require(
        "none" not in report_to or len(set(report_to)) == 1,
        "report_to",
        "'none' turns every tracker off; it cannot be combined with others",
    )


def _validate_judge(j: JudgeConfig) -> None:
    """Checks without the network; the endpoint itself is probed when the rewards are built."""
    _require(j.timeout_s > 0, "reward.judge.timeout_s", "must be > 0 seconds")
    _require(j.max_retries >= 0, "reward.judge.max_retries", "must be >= 0")
    _require(j.concurrency >= 1, "reward.judge.concurrency", "must be >= 1")
    _require(j.temperature >= 0, "reward.judge.temperature", "must be >= 0")
    _require(j.max_tokens is None or j.max_tokens >= 1, "reward.judge.max_tokens", "must be >= 1")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(j.prompt) if name is not None}
    except ValueError as e:
        raise ConfigError(
            f"reward.judge.prompt: {e} (write literal braces as {{{{ and }}}})"
        ) from e
    unknown = fields - set(JUDGE_FIELDS)
    _require(
        not unknown,
        "reward.judge.prompt",
        f"unknown field(s) {', '.join(sorted('{' + f + '}' for f in unknown))}; "
        f"use {', '.join('{' + f + '}' for f in JUDGE_FIELDS)} (literal braces: {{{{ }}}})",
    )
    _require("completion" in fields, "reward.judge.prompt", "must contain {completion}")
    if j.weight == 0:
        return
    _require(
        j.base_url.startswith(("http://", "https://")),
        "reward.judge.base_url",
        f"'{j.base_url}' is not an http(s) URL (e.g. http://localhost:8080/v1)",
    )
    _require(bool(j.model), "reward.judge.model", "name the judge model the server serves")
