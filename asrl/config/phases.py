"""The training phases' settings: SFT, GRPO and the rollout engine that samples for GRPO
and evaluation (part of the schema, :mod:`asrl.config.schema`, which re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SFTConfig:
    # The paper used 1e-6; with LoRA on a 135M model that barely moves in a few epochs, so
    # our default is the usual LoRA SFT rate. configs/paper.yaml keeps the paper's value.
    lr: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_examples_per_phase: int | None = None  # None: the whole train split each phase
    # with max_examples_per_phase: records no SFT phase has trained on first (new data is
    # learned at the next phase), then the least recently trained; false: a random sample
    unseen_first: bool = True
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
    # TRL's: completions cut at max_new_tokens leave the loss (still counted in rewards)
    mask_truncated_completions: bool = False
    # How a round's questions are drawn from the train split. uniform: at random. pass_rate:
    # weighted by p (1 - p) + pass_rate_floor, p = the record's recent pass rate (an EMA over
    # the rounds it was sampled in, of the fraction of its group with a correctness score, or
    # the total reward without a correctness function, >= pass_threshold); a record never
    # sampled counts as p = 0.5, so new data is explored first. Kept in checkpoints.
    question_selection: str = "uniform"  # uniform | pass_rate
    # Where a round's questions come from. train: the train split; with fresh_questions, the
    # records no SFT phase of this run has trained on come first, then the least recently
    # trained (question_selection draws within each). generator: new questions of the data
    # generator (data.generate's mix) on a seed stream of each phase's own; reasoning_gym:TASK:
    # new items of that task (data.reasoning_gym's options). With either, every group is a
    # question never trained on, and none is a validation or test question (docs/training.md).
    question_source: str = "train"  # train | generator | reasoning_gym:TASK
    fresh_questions: bool = True
    pass_threshold: float = 1.0
    pass_rate_ema: float = 0.5  # weight of the newest round in the moving average
    pass_rate_floor: float = 0.05  # weight of an always-solved / never-solved record
    # rollouts (prompt, completion, reward and its components, advantage) written to
    # OUTDIR/samples.jsonl and the trackers each GRPO phase: the first groups of the round
    samples_to_log: int = 6


@dataclass
class RolloutConfig:
    """How completions are decoded, for GRPO rounds and evaluation (asrl/rollout/)."""

    engine: str = "auto"  # auto | asrl | hf | vllm (asrl/rollout/__init__.py says which is what)
    max_batch_tokens: int = 65_536  # asrl engine: KV positions held, rows x (prompt + new)
    vllm_gpu_memory_utilization: float = 0.3  # vllm engine: its share of GPU memory
