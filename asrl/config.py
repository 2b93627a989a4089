"""Typed configuration: one dataclass per concern, defaults in one place, YAML + overrides.

``load_config(path, overrides=["grpo.beta=0.04"])`` reads a YAML file, applies ``--set``
style overrides and validates everything before any heavy work starts. Errors name the
key and say what would be accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asrl.data.format import ThinkingFormat
from asrl.data.records import MAX_LINE_BYTES


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the key."""


class _Loader(yaml.SafeLoader):
    """YAML as users write it: ``1e-5``, ``5E-6``, ``1.0e5`` are floats (YAML 1.2), where
    PyYAML's YAML 1.1 rules need a dot and a signed exponent (``1.0e-5``) and read the
    others as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 floats (see :class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects


@dataclass
class LoraConfig:
    # The paper's settings: r=32, alpha=64, no dropout, all seven projections.
    r: int = 32
    alpha: int = 64
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "up_proj",
            "down_proj",
            "gate_proj",
        ]
    )


@dataclass
class ModelConfig:
    # HF id or local dir, a .gguf file, "smollm2-135m" (embedded), or "tiny-random-llama" /
    # "tiny-random-qwen3" (random weights, for tests).
    name: str = "smollm2-135m"
    device: str = "auto"  # auto | cpu | cuda | mps
    # Mixed precision for forward passes. "auto": bf16 (fp16 where bf16 is missing) on a GPU;
    # on a CPU, bf16 only if a timed matmul says it is >= 1.3x faster (2x faster on a Xeon
    # with AMX, 2x slower on the AVX512-BF16 VM without it). Master weights stay fp32 so
    # LoRA updates and merge/unmerge stay exact.
    autocast: str = "auto"  # auto | bf16 | fp16 | none
    # Master weights: float32, or float64 where summation order must not show (the tests
    # that compare a 2-process run with a 1-process one run in float64: ~1e-16 rounding)
    dtype: str = "float32"  # float32 | float64
    trust_remote_code: bool = False
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Start from existing LoRA weights instead of a fresh adapter: a run directory (its
    # latest checkpoint, as `asrl export` picks it), one of its checkpoints/epoch-NNNN[.pK],
    # or an exported adapter directory (adapter_config.json + adapter_model.safetensors).
    # Only the weights are taken (optimizers start fresh: a new run, not a resume); rank,
    # alpha, target modules and the base model must match. Read when a run starts; a
    # --resume continues from the run's own checkpoints and never reads it again.
    adapter: str | None = None


@dataclass
class FormatConfig:
    think_open: str = "<|thinking|>"
    think_close: str = "<|/thinking|>"
    sections: list[list[str]] = field(
        default_factory=lambda: [["[LOGIC]", "[/LOGIC]"], ["[INTUITION]", "[/INTUITION]"]]
    )

    def spec(self) -> ThinkingFormat:
        return ThinkingFormat.from_pairs(self.sections, self.think_open, self.think_close)


@dataclass
class GenerateConfig:
    """Write a synthetic starting dataset to ``data.path`` when that file does not exist."""

    count: int = 0
    mix: str = "paper"
    seed: int = 0


@dataclass
class InjectConfig:
    """Experiment aid (live-data comparisons): at the start of epoch ``at_epoch`` append
    ``count`` synthetic records of ``mix`` to the JSONL file at ``data.path``, as a writer
    would, before the dataset refreshes. 0 disables it. Only for a JSONL file source."""

    at_epoch: int = 0
    count: int = 100
    mix: str = "percent"
    seed: int = 0


@dataclass
class ColumnsConfig:
    """Which column of a Hugging Face dataset / parquet source holds each record field.

    Defaults are our record field names. Columns not named here are kept on the record and
    reach reward functions as keyword arguments (TRL passes every dataset column too).
    """

    prompt: str = "prompt"
    messages: str = "messages"
    response: str = "response"
    completion: str = "completion"
    answer: str = "answer"
    id: str = "id"
    type: str = "type"


@dataclass
class HFConfig:
    """Settings of a Hugging Face source (a ``save_to_disk`` directory or ``hf:owner/name``)."""

    split: str = "train"  # the split of a DatasetDict / of load_dataset
    name: str | None = None  # hub datasets: the configuration (load_dataset's second argument)
    revision: str | None = None  # hub datasets: a branch, tag or commit


@dataclass
class ReasoningGymConfig:
    """Settings of a ``reasoning_gym:TASK`` source: a procedural generator polled each epoch.

    The first poll yields ``initial`` examples, every later poll (one per epoch) ``per_poll``
    more, until ``size`` examples have been produced. Example ``i`` depends only on
    (task, seed, options, i), so runs reproduce and a resumed run regenerates what it had.
    """

    seed: int = 0
    initial: int = 200
    per_poll: int = 50  # 0: a fixed set of ``initial`` examples
    size: int = 100_000  # examples in the stream (reasoning-gym datasets have a fixed size)
    # task options for reasoning_gym.create_dataset (e.g. {min_terms: 2, max_terms: 3})
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    # A JSONL file or directory, a SQLite table (x.db, sqlite:PATH:TABLE), a Hugging Face
    # dataset (a save_to_disk directory, a .parquet file / directory / glob, hf:owner/name),
    # or a generator (reasoning_gym:TASK). See asrl.data.sources.open_source.
    path: str = "data/train.jsonl"
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train / val / test
    max_length: int = 512  # tokens (prompt + response); longer examples are dropped, reported
    # bytes of one JSONL line (1 MiB): a longer line is skipped while reading, never held in
    # memory whole, and quarantined with its length
    max_line_bytes: int = MAX_LINE_BYTES
    system_prompt: str | None = None  # None: the chat template's default
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    inject: InjectConfig = field(default_factory=InjectConfig)
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    reasoning_gym: ReasoningGymConfig = field(default_factory=ReasoningGymConfig)


@dataclass
class SFTConfig:
    # The paper used 1e-6; with LoRA on a 135M model that barely moves in a few epochs, so
    # our default is the usual LoRA SFT rate. configs/paper.yaml keeps the paper's value.
    lr: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_examples_per_phase: int | None = None  # None: the whole train split each phase
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0


@dataclass
class GRPOConfig:
    lr: float = 2e-5
    lr_final_ratio: float = 0.5  # LR decays linearly to lr * ratio inside each GRPO phase
    questions_per_epoch: int = 8
    num_generations: int = 6
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 96
    loss_type: str = "grpo"  # grpo | bnpo | dr_grpo | dapo (TRL's meanings)
    epsilon: float = 0.2  # clip range low (and high unless epsilon_high is set)
    epsilon_high: float | None = None  # DAPO clip-higher uses 0.28
    beta: float = 0.0  # KL to the reference (base model, adapter disabled); 0 skips it
    kl_ratio_correction: bool = False  # KL_k3 * rho, as TRL's use_bias_correction_kl (beta > 0)
    scale_rewards: str = "group"  # group | batch | none
    # A phase runs rounds_per_phase rounds; a round samples questions_per_epoch prompts x
    # num_generations completions, then takes steps_per_round x num_iterations optimizer steps
    # on them. steps_per_round: the round's completions are split into that many disjoint
    # optimizer steps (TRL's steps_per_generation / gradient_accumulation_steps).
    # num_iterations: passes over those same steps (TRL's num_iterations, the GRPO paper's mu),
    # each ratio clipped against log-probs computed once when the round was sampled.
    steps_per_round: int = 2
    num_iterations: int = 1
    # sample-and-update rounds per phase, each on fresh rollouts from the updated policy; the
    # LR decays linearly (to lr * lr_final_ratio) across all the phase's steps. 1: one round.
    rounds_per_phase: int = 1
    micro_batch_size: int = 8  # completions per forward/backward
    max_grad_norm: float = 1.0
    # DAPO dynamic sampling: drop groups whose rewards are all equal (no advantage, no
    # gradient) and sample more questions (up to max_resample_rounds extra rollouts per round)
    # until the round holds questions_per_epoch informative groups. Off by default until a
    # measurement shows it helps here; each extra rollout costs generation time.
    filter_zero_std: bool = False
    max_resample_rounds: int = 2
    # TRL's mask_truncated_completions: completions that hit max_new_tokens without an
    # end-of-turn token are left out of the loss (they still count in the group's rewards)
    mask_truncated_completions: bool = False
    # How a round's questions are drawn from the train split. uniform: at random. pass_rate:
    # weighted by p (1 - p) + pass_rate_floor, p = the record's recent pass rate (an EMA over
    # the rounds it was sampled in, of the fraction of its group with a correctness score, or
    # the total reward without a correctness function, >= pass_threshold); a record never
    # sampled counts as p = 0.5, so new data is explored first. Kept in checkpoints.
    question_selection: str = "uniform"  # uniform | pass_rate
    pass_threshold: float = 1.0
    pass_rate_ema: float = 0.5  # weight of the newest round in the moving average
    pass_rate_floor: float = 0.05  # weight of an always-solved / never-solved record
    # rollouts (prompt, completion, reward and its components, advantage) written to
    # OUTDIR/samples.jsonl and the trackers each GRPO phase: the first groups of the round
    samples_to_log: int = 6


@dataclass
class RewardFunctionConfig:
    path: str = ""  # "package.module:function", following TRL's reward contract
    weight: float = 1.0


# The judge's prompt. Fields: {question} (the last user turn), {answer} (the record's ground
# truth, else its reference response's final answer), {reference} (the whole reference
# response), {completion}. Literal braces are written {{ and }}.
JUDGE_PROMPT = """You are grading a model's answer to a question, against a reference answer.

Question:
{question}

Reference answer:
{answer}

Model's answer:
{completion}

Rate the model's answer from 1 to 10: 10 when its final answer agrees with the reference and its \
reasoning is sound, 1 when it is wrong or missing. Reply with the number only."""
JUDGE_FIELDS = ("question", "answer", "reference", "completion")


@dataclass
class JudgeConfig:
    """An LLM judge through any OpenAI-compatible chat endpoint (llama.cpp, vLLM, Ollama, a
    hosted API): it rates each completion 1-10 against the reference; the reward is
    (score - 1) / 9, in [0, 1]. Off while ``weight`` is 0. See asrl/judge.py."""

    weight: float = 0.0
    base_url: str = "http://localhost:8080/v1"
    model: str = ""
    api_key_env: str | None = None  # name of the env var holding the key; None: no key
    timeout_s: float = 60.0  # per request
    max_retries: int = 2  # on connection errors, timeouts, 408/409/429/5xx (the openai client)
    concurrency: int = 4  # requests in flight while scoring a batch
    temperature: float = 0.0  # greedy: the same completion gets the same score
    max_tokens: int | None = 16  # reply budget; raise it for models that think first
    prompt: str = JUDGE_PROMPT
    # one judge call on a fixed example when the run starts, before the model loads: a wrong
    # URL, model name or key fails in seconds, not at the first GRPO round
    probe: bool = True


@dataclass
class RewardConfig:
    format_weight: float = 0.15
    correctness_weight: float = 0.85
    # How a final answer is compared with the ground truth: "contained" (the paper's: 1 exact,
    # 0.5 contained, -0.5 otherwise) or "math_verify" (1 when math-verify finds the two
    # mathematically equal, e.g. 1/2 and 0.5; otherwise the contained score). Records from a
    # reasoning_gym source are always scored by their task's own scorer (0..1).
    correctness: str = "contained"
    custom: list[RewardFunctionConfig] = field(default_factory=list)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # A reward function that raises: "stop" (default) ends the run naming the function and
    # the example; "skip" records None for that function on that batch (never a silent 0)
    # and counts it (train/reward_errors), stopping after max_errors in the run.
    on_error: str = "stop"
    max_errors: int = 10


@dataclass
class TrainConfig:
    """Safety limits shared by every phase."""

    # optimizer steps with a NaN/inf loss or gradient are skipped; this many in a row
    # means training diverged and the run stops (the last checkpoint stays good)
    max_bad_steps_in_row: int = 5


@dataclass
class EvalConfig:
    split: str = "val"
    max_examples: int = 32
    max_new_tokens: int = 96
    batch_size: int = 32
    samples_to_log: int = 8  # greedy outputs written to OUTDIR/samples.jsonl after each eval
    # The final evaluation on the test split (once, when a run ends; never used for early
    # stopping): at most this many examples, chosen as for eval.max_examples. None: the
    # same cap as eval.max_examples. It runs once, so it may afford more.
    test_max_examples: int | None = None


@dataclass
class ScheduleConfig:
    method: str = "asrl"
    epochs: int = 4
    patience: int = 3  # epochs in a row with neither phase improving the metric
    early_stopping_metric: str = "eval/val_loss"
    early_stopping_mode: str = "min"  # min | max
    # Wall-clock seconds of training after which the run ends at the next phase boundary
    # (checkpoint, summary with stopped: time_budget, then the test eval). Training time is
    # the epoch loop: data refreshes, phases, their evals and checkpoints; not the model
    # load, the initial eval or the final test eval. Kept in checkpoints, so a resumed run
    # goes on spending the same budget. 0: evaluate the starting model only. None: no limit.
    time_budget_s: float | None = None
    # sequential: SFT for this many epochs, then GRPO only
    sft_epochs: int = 1
    # ares: GRPO for stage_epochs epochs, then SFT for stage_epochs epochs, repeat
    stage_epochs: int = 1
    # adaptive (SASR-style, ours; see schedules.Adaptive): epoch 1 is an SFT warm-up, then
    # adaptive_slots phases per epoch, each SFT with probability clip(signal, p_min, 1)
    adaptive_slots: int = 2
    adaptive_signal: str = "grad_norm"  # grad_norm | format_accuracy
    adaptive_p_min: float = 0.1
    # chord: L = (1 - mu) * L_GRPO + mu * L_SFT per GRPO step; mu warms up linearly to
    # mu_peak over warmup steps, then cosine-decays to mu_valley over decay steps. Our
    # defaults are scaled to our small step counts (a few GRPO steps per epoch).
    chord_mu_peak: float = 0.9
    chord_mu_valley: float = 0.05
    chord_warmup_steps: int = 0
    chord_decay_steps: int = 16
    chord_phi: bool = False  # weight expert tokens by p(1 - p), p = pi(token), detached
    chord_sft_batch_size: int = 4  # expert examples per GRPO optimizer step
    # relift: one SFT step once this many all-fail prompts are buffered
    relift_buffer: int = 8


@dataclass
class CheckpointConfig:
    keep_last: int = 2
    # phase: after every phase (a crash costs at most the phase in flight); epoch: at epoch
    # ends only; none. The adaptive schedule decides phases lazily and saves at epoch ends.
    every: str = "phase"  # phase | epoch | none


@dataclass
class Config:
    seed: int = 0
    output_dir: str = "runs/asrl"
    model: ModelConfig = field(default_factory=ModelConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # where metrics.jsonl lines and sample completions also go: tensorboard (event files in
    # OUTDIR/tensorboard/), trackio, wandb (installed separately); [] or [none]: nowhere
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------
# building from dicts, with errors that name the key


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: got {value!r}")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(hint) or (Any,)
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _build(hint, value, key + ".")
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown setting '{prefix}{key}'.{hint} Known here: {', '.join(names)}"
            )
        kwargs[key] = _check_type(value, hints[key], prefix + key)
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"grpo.beta=0.04"`` -> ``("grpo.beta", 0.04)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    return key.strip(), yaml_load(raw) if raw.strip() else ""


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    data = dict(data or {})
    for o in overrides or []:
        key, value = parse_override(o)
        _set_dotted(data, key, value)
    if isinstance(data.get("report_to"), str):  # report_to: none / --set report_to=wandb
        data["report_to"] = [data["report_to"]]
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return config_from_dict(data, overrides)


# ---------------------------------------------------------------------------------------
# value checks (types are already right here)


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: Config) -> None:
    g, s, d = cfg.grpo, cfg.sft, cfg.data
    _require(
        g.num_generations >= 2,
        "grpo.num_generations",
        "must be >= 2: group advantages "
        "compare completions of the same prompt, one alone has nothing to compare with",
    )
    _require(g.questions_per_epoch >= 1, "grpo.questions_per_epoch", "must be >= 1")
    _require(
        g.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"),
        "grpo.loss_type",
        f"'{g.loss_type}' is not one of grpo, bnpo, dr_grpo, dapo",
    )
    _require(
        g.scale_rewards in ("group", "batch", "none"),
        "grpo.scale_rewards",
        "use group, batch or none",
    )
    _require(g.temperature > 0, "grpo.temperature", "must be > 0")
    _require(0 < g.top_p <= 1, "grpo.top_p", "must be in (0, 1]")
    _require(g.epsilon > 0, "grpo.epsilon", "must be > 0")
    _require(g.beta >= 0, "grpo.beta", "must be >= 0")
    _require(g.steps_per_round >= 1, "grpo.steps_per_round", "must be >= 1")
    _require(g.num_iterations >= 1, "grpo.num_iterations", "must be >= 1 (1: one pass)")
    _require(g.rounds_per_phase >= 1, "grpo.rounds_per_phase", "must be >= 1")
    _require(g.max_resample_rounds >= 0, "grpo.max_resample_rounds", "must be >= 0")
    _require(
        g.question_selection in ("uniform", "pass_rate"),
        "grpo.question_selection",
        f"'{g.question_selection}' is not one of uniform, pass_rate",
    )
    _require(0 < g.pass_rate_ema <= 1, "grpo.pass_rate_ema", "must be in (0, 1]")
    _require(g.pass_rate_floor > 0, "grpo.pass_rate_floor", "must be > 0")
    _require(g.micro_batch_size >= 1, "grpo.micro_batch_size", "must be >= 1")
    _require(g.max_new_tokens >= 1, "grpo.max_new_tokens", "must be >= 1")
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
    _require(
        cfg.model.autocast in ("auto", "bf16", "fp16", "none"),
        "model.autocast",
        "use auto, bf16, fp16 or none",
    )
    _require(cfg.model.dtype in ("float32", "float64"), "model.dtype", "use float32 or float64")
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
    _require(
        cfg.schedule.early_stopping_mode in ("min", "max"),
        "schedule.early_stopping_mode",
        "use min or max",
    )
    _validate_schedule(cfg.schedule)
    _validate_inject(cfg.data.inject)
    _validate_source(cfg.data)
    _require(
        cfg.checkpoint.every in ("epoch", "phase", "none"),
        "checkpoint.every",
        "use epoch, phase or none",
    )
    _validate_rewards(cfg.reward)
    _validate_report_to(cfg.report_to)
    _require(cfg.grpo.samples_to_log >= 0, "grpo.samples_to_log", "must be >= 0")
    _require(cfg.train.max_bad_steps_in_row >= 1, "train.max_bad_steps_in_row", "must be >= 1")
    _validate_model_path(cfg.model.name)
    from asrl.schedules import SCHEDULES  # late import: schedules import config types

    _require(
        cfg.schedule.method in SCHEDULES,
        "schedule.method",
        f"'{cfg.schedule.method}' is not one of {', '.join(sorted(SCHEDULES))}",
    )


def _validate_schedule(s: ScheduleConfig) -> None:
    _require(s.sft_epochs >= 0, "schedule.sft_epochs", "must be >= 0")
    _require(s.stage_epochs >= 1, "schedule.stage_epochs", "must be >= 1")
    _require(s.adaptive_slots >= 1, "schedule.adaptive_slots", "must be >= 1")
    _require(
        s.adaptive_signal in ("grad_norm", "format_accuracy"),
        "schedule.adaptive_signal",
        "use grad_norm or format_accuracy",
    )
    _require(0 <= s.adaptive_p_min <= 1, "schedule.adaptive_p_min", "must be in [0, 1]")
    for key in ("chord_mu_peak", "chord_mu_valley"):
        _require(0 <= getattr(s, key) <= 1, f"schedule.{key}", "must be in [0, 1]")
    for key in ("chord_warmup_steps", "chord_decay_steps"):
        _require(getattr(s, key) >= 0, f"schedule.{key}", "must be >= 0")
    _require(s.chord_sft_batch_size >= 1, "schedule.chord_sft_batch_size", "must be >= 1")
    _require(s.relift_buffer >= 1, "schedule.relift_buffer", "must be >= 1")


def _validate_inject(inj: InjectConfig) -> None:
    from asrl.data.synthetic import MIXES

    _require(inj.at_epoch >= 0, "data.inject.at_epoch", "must be >= 0 (0: off)")
    _require(inj.count >= 0, "data.inject.count", "must be >= 0")
    _require(inj.mix in MIXES, "data.inject.mix", f"use one of {', '.join(sorted(MIXES))}")


def _validate_source(d: DataConfig) -> None:
    rg = d.reasoning_gym
    _require(rg.initial >= 1, "data.reasoning_gym.initial", "must be >= 1")
    _require(rg.per_poll >= 0, "data.reasoning_gym.per_poll", "must be >= 0 (0: a fixed set)")
    _require(rg.size >= 1, "data.reasoning_gym.size", "must be >= 1")
    if d.path.startswith("reasoning_gym:"):
        from asrl.data.gym import check_task  # late import: reasoning-gym is an optional extra

        check_task(d.path.split(":", 1)[1], rg.options)


def _validate_rewards(r: RewardConfig) -> None:
    _require(r.on_error in ("stop", "skip"), "reward.on_error", "use stop or skip")
    _require(
        r.correctness in ("contained", "math_verify"),
        "reward.correctness",
        f"'{r.correctness}' is not one of contained, math_verify",
    )
    if r.correctness == "math_verify":
        from asrl.rewards import require_math_verify

        require_math_verify()
    _require(r.max_errors >= 1, "reward.max_errors", "must be >= 1")
    _validate_judge(r.judge)
    from asrl.rewards import import_reward  # late import: rewards import config types

    for i, c in enumerate(r.custom):
        _require(":" in c.path, f"reward.custom[{i}].path", "write it as 'package.module:function'")
        # import now, before the model loads: a typo should cost seconds, not a model load.
        # Only modules named in the config are imported; nothing in the data is ever run.
        try:
            import_reward(c.path)
        except ConfigError as e:
            raise ConfigError(f"reward.custom[{i}].path: {str(e).split(': ', 1)[1]}") from e


def _validate_report_to(report_to: list[str]) -> None:
    from asrl.trackers import PACKAGES, check_available  # late import: trackers import config

    known = [*PACKAGES, "none"]
    for i, name in enumerate(report_to):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        _require(
            name in known, f"report_to[{i}]", f"'{name}' is not one of {', '.join(known)}.{hint}"
        )
    _require(
        "none" not in report_to or len(set(report_to)) == 1,
        "report_to",
        "'none' turns every tracker off; it cannot be combined with others",
    )
    check_available(report_to)  # wandb / trackio asked for but not installed: say so now


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
    if j.api_key_env is not None:
        _require(
            bool(os.environ.get(j.api_key_env)),
            "reward.judge.api_key_env",
            f"environment variable {j.api_key_env} is not set (or empty); export the key "
            "there, or remove api_key_env for a server that needs none",
        )
    from asrl.judge import import_openai  # late import: judge imports config types

    import_openai()


def _validate_model_path(name: str) -> None:
    """A name that is clearly a local path (or a .gguf file) must exist.

    A hub id looks like ``org/name``; absolute, ``./``, ``../``, ``~`` and deeper paths are
    local, and from_pretrained would fail on them only after seconds of imports and with a
    message about the hub.
    """
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        _require(path.is_file(), "model.name", f"GGUF file not found: {path}")
        return
    local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    if local:
        path = Path(name).expanduser()
        _require(
            path.is_dir(),
            "model.name",
            f"model directory not found: {path} (give a directory holding config.json, "
            "a .gguf file, a hub id already in the local cache, or smollm2-135m)",
        )
