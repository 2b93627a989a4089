"""The configuration schema: one dataclass per concern, every default in one place.

Nothing here reads files or imports the rest of asrl (bar the thinking-format type and
the record size limit): ``asrl.config.loading`` builds a :class:`Config` from YAML and
``--set`` overrides, ``asrl.config.checks`` checks its values, and ``asrl.preflight``
does the checks that need imports or I/O before a run loads its model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from asrl.config.phases import GRPOConfig, RolloutConfig, SFTConfig
from asrl.data.format import ThinkingFormat
from asrl.data.records import MAX_LINE_BYTES

# Choice lists of settings whose values are names this schema owns. Settings naming things
# other modules own (methods, data mixes, trackers) are checked against those modules'
# registries (asrl.config.checks, asrl.preflight).
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
ROLLOUT_ENGINES = ("auto", "asrl", "hf", "vllm")
SCALE_REWARDS = ("group", "batch", "none")
QUESTION_SELECTIONS = ("uniform", "pass_rate")
AUTOCASTS = ("auto", "bf16", "fp16", "none")
DTYPES = ("float32", "float64")
CORRECTNESS = ("contained", "math_verify")
ON_ERROR = ("stop", "skip")
ADAPTIVE_SIGNALS = ("grad_norm", "format_accuracy")
STOPPING_MODES = ("min", "max")
CHECKPOINT_EVERY = ("phase", "epoch", "none")


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
    (score - 1) / 9, in [0, 1]. Off while ``weight`` is 0. See asrl/rewards/judge.py."""

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
    """Safety limits: optimizer steps with a NaN/inf loss or gradient are skipped, and
    max_bad_steps_in_row in a row means training diverged: the run stops."""

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
    # Decoding. temperature 0: greedy (the default, the paper's metric). > 0: sampled at this
    # temperature and top_p, samples_per_example completions per example (a fixed seed, so
    # two adapters meet the same random stream), every metric but val_loss averaged over them.
    # Sampled correctness is what GRPO's reward optimizes; greedy decoding can hide its gains.
    temperature: float = 0.0
    top_p: float = 1.0
    samples_per_example: int = 1


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
    # adaptive (SASR-style, ours; see asrl.methods.adaptive): epoch 1 is an SFT warm-up, then
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
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # where metrics.jsonl lines and sample completions also go: tensorboard (event files in
    # OUTDIR/tensorboard/), trackio, wandb (installed separately); [] or [none]: nowhere
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
