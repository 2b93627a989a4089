"""The GRPO phase: sample groups, score, group-normalise, clipped policy-gradient update.

The maths (``group_advantages``, ``grpo_loss``) are pure functions in ``asrl.algo.grpo_loss``
matching TRL 1.x for the same ``loss_type``; ``run_grpo_phase`` wires them to rollouts
(``asrl.phases.rollouts``) and the optimizer (``asrl.phases.grpo_update``).

A phase is ``rounds_per_phase`` rounds. A round draws ``questions_per_epoch`` questions
(uniformly, or by their recent pass rate: ``asrl.phases.selection``), samples
``num_generations`` completions of each and scores them; with ``filter_zero_std`` (DAPO's
dynamic sampling) groups whose rewards are all equal are dropped and more questions are
sampled, up to ``max_resample_rounds`` times; then ``grpo_update`` takes
``steps_per_round`` x ``num_iterations`` optimizer steps on what the round kept.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from asrl.algo.grpo_loss import zero_std_groups
from asrl.config import GRPOConfig
from asrl.model.loading import Policy
from asrl.parallel import distributed
from asrl.phases.common import finite_mean
from asrl.phases.grpo_update import GRPOHooks, UpdateStats, grpo_update
from asrl.phases.rollouts import (
    concat_rollouts,
    gather_rollout,
    rollout,
    rollout_samples,
    select_groups,
    truncated,
)
from asrl.phases.selection import PassRates, SFTHistory, choose_questions
from asrl.rewards.builtin import RewardSet
from asrl.tracking.metrics import console
from asrl.types import Example, PhaseResult, Rollout


@dataclass
class _RoundDraw:
    """What one round sampled: ``trained`` (the groups kept for the update), ``sampled``
    (every gathered rollout, filtered groups too) and the selection's counts."""

    trained: Rollout
    sampled: list[Rollout]
    resamples: int = 0  # extra rollouts after the first (dynamic sampling)
    filtered: int = 0  # groups dropped for equal rewards
    unseen: int = 0  # questions without a pass rate when chosen
    sft_trained: int = 0  # questions an SFT phase of this run had trained on
    seen_rates: list[float] = field(default_factory=list)  # pass rates of the others


def _round_seed(seed: int, round_: int, attempt: int) -> int:
    """The rollout seed of a round's attempt: the phase seed for the first one."""
    if round_ == 0 and attempt == 0:
        return seed
    return random.Random(f"{seed}:grpo-round:{round_}:{attempt}").getrandbits(31)


def _sample_round(
    policy: Policy,
    train: list[Example],
    cfg: GRPOConfig,
    rewards: RewardSet,
    rng: random.Random,
    seed: int,
    round_: int,
    rates: PassRates,
    system_prompt: str | None,
    history: SFTHistory | None = None,
) -> _RoundDraw:
    """Draw questions, sample and score their groups; with ``filter_zero_std`` drop the
    groups with equal rewards and draw again (questions not yet used this round) until
    ``questions_per_epoch`` groups are kept or ``max_resample_rounds`` extra draws are done.

    Several processes: each samples its share, the rollouts are gathered, and every
    decision is taken on the gathered rewards with the shared ``rng``: all processes agree.
    """
    d = distributed.current()
    G = cfg.num_generations
    want = min(cfg.questions_per_epoch, len(train))
    draw = _RoundDraw(Rollout([], [], [], [], [], {}), [])
    kept: list[Rollout] = []
    used: set[int] = set()
    informative = 0
    attempts = 1 + (cfg.max_resample_rounds if cfg.filter_zero_std else 0)
    for attempt in range(attempts):
        idx = choose_questions(train, want - informative, rng, cfg, rates, used, history)
        if not idx:
            break  # every train record was tried this round
        used.update(idx)
        questions = [train[i] for i in idx]
        for q in questions:
            draw.sft_trained += history is not None and history.get(q.id) is not None
            p = rates.get(q.id)
            if p is None:
                draw.unseen += 1
            else:
                draw.seen_rates.append(p)
        s = _round_seed(seed, round_, attempt)
        own_seed = s if d.rank == 0 else (s + 7919 * d.rank) % 2**31
        policy.model.eval()  # no dropout while sampling
        ro = rollout(policy, d.shard(questions), cfg, rewards, own_seed, system_prompt)
        ro = gather_rollout(d, ro, G)  # every process: the whole draw
        rates.observe(ro, G, cfg.pass_threshold, cfg.pass_rate_ema)
        draw.sampled.append(ro)
        draw.resamples = attempt
        if not cfg.filter_zero_std:
            kept.append(ro)
            break
        equal = zero_std_groups(torch.tensor(ro.rewards, dtype=torch.float32), G).tolist()
        kept.append(select_groups(ro, [not e for e in equal], G))
        draw.filtered += sum(equal)
        informative += len(equal) - sum(equal)
        if informative >= want:
            break
    draw.trained = concat_rollouts(kept)
    return draw


def run_grpo_phase(
    policy: Policy,
    train: list[Example],
    cfg: GRPOConfig,
    rewards: RewardSet,
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    seed: int,
    system_prompt: str | None = None,
    desc: str = "grpo",
    hooks: GRPOHooks | None = None,
    pass_rates: PassRates | None = None,
    sft_history: SFTHistory | None = None,
) -> PhaseResult:
    """``rounds_per_phase`` rounds: sample (``_sample_round``), then ``grpo_update``.

    The LR decays linearly from ``lr`` to ``lr * lr_final_ratio`` across all the phase's
    planned steps (rounds x steps_per_round x num_iterations; the paper's "slight decay
    during GRPO"); the loop resets it next epoch. A round left with no informative group
    (dynamic sampling) takes no step: it is logged (``train/skipped_updates``) and the
    phase goes on. ``pass_rates``: the run's record pass rates, updated in place;
    ``sft_history``: when each record was last SFT-trained (``grpo.fresh_questions``).
    """
    start = time.perf_counter()
    hooks = hooks or GRPOHooks()
    d = distributed.current()  # several processes: each samples its share of the questions
    G = cfg.num_generations
    rates = pass_rates if pass_rates is not None else PassRates()
    want = min(cfg.questions_per_epoch, len(train))
    per_round = min(cfg.steps_per_round, want * G) * cfg.num_iterations
    total_steps = cfg.rounds_per_phase * per_round
    # one bar for the phase: each rollout counts as a step (it is often half the time)
    bar = tqdm(
        total=total_steps + cfg.rounds_per_phase,
        desc=f"{desc} (sampling)",
        unit="step",
        leave=False,
        dynamic_ncols=True,
        disable=d.quiet,
    )
    draws: list[_RoundDraw] = []
    updates: list[UpdateStats] = []
    hook_metrics: dict[str, list[float]] = {}
    skipped = 0
    shown: tuple[Rollout, torch.Tensor] | None = None  # the rollout samples are taken from
    steps = 0
    for r in range(cfg.rounds_per_phase):
        bar.set_description(f"{desc} (sampling)")
        draw = _sample_round(
            policy, train, cfg, rewards, rng, seed, r, rates, system_prompt, sft_history
        )
        draws.append(draw)
        bar.update(1)
        bar.set_description(desc)
        if draw.trained.completions:
            upd = grpo_update(
                policy, draw.trained, cfg, optimizer, rng, hooks, bar, steps, total_steps
            )
            for key, v in upd.hook_metrics.items():
                hook_metrics.setdefault(key, []).extend(v)
            updates.append(upd)
            steps += upd.steps
            shown = (draw.trained, upd.advantages)
        else:
            skipped += 1
            console(
                f"{desc}: round {r + 1}: no group with different rewards after "
                f"{draw.resamples + 1} rollout(s); update skipped (grpo.filter_zero_std)"
            )
        if hooks.after_round:
            for key, v in hooks.after_round(concat_rollouts(draw.sampled)).items():
                hook_metrics.setdefault(key, []).append(v)
    bar.close()
    seconds = time.perf_counter() - start
    everything = concat_rollouts([ro for dr in draws for ro in dr.sampled])
    if shown is None:  # nothing trained: the last round's rollouts, no advantage
        last = concat_rollouts(draws[-1].sampled) if draws else everything
        shown = (last, torch.zeros(len(last.completions)))
    r = torch.tensor(everything.rewards, dtype=torch.float32)
    n_groups = r.numel() // G
    eq = zero_std_groups(r, G) if n_groups else torch.zeros(0, dtype=torch.bool)
    losses = [x for u in updates for x in u.losses]
    n_mb = sum(u.micro_batches for u in updates)
    ent_tokens = sum(u.entropy_tokens for u in updates)
    stop = {
        t for t in (policy.tokenizer.eos_token_id, policy.tokenizer.pad_token_id) if t is not None
    }
    cut = truncated(everything.completion_ids, stop)
    seen_rates = [p for dr in draws for p in dr.seen_rates]
    gen_seconds = everything.seconds
    tokens_trained = sum(u.tokens for u in updates)
    metrics = {
        "train/grpo_loss": sum(losses) / len(losses) if losses else float("nan"),
        # pre-clip; skipped steps left out
        "train/grpo_grad_norm": finite_mean([x for u in updates for x in u.grad_norms]),
        "train/reward_mean": float(r.mean()) if r.numel() else float("nan"),
        "train/reward_std": float(r.std()) if r.numel() > 1 else 0.0,
        # among all groups sampled (before dynamic sampling's filter)
        "train/frac_zero_std_groups": float(eq.float().mean()) if n_groups else float("nan"),
        "train/groups_filtered": sum(dr.filtered for dr in draws),
        "train/resample_rounds": sum(dr.resamples for dr in draws),
        "train/skipped_updates": skipped,
        "train/kl": sum(u.kl * u.micro_batches for u in updates) / max(n_mb, 1),
        "train/clip_ratio": sum(u.clip_ratio * u.micro_batches for u in updates) / max(n_mb, 1),
        # TRL's `entropy`: mean entropy of the completion tokens in the loss
        "train/entropy": (
            sum(u.entropy * u.entropy_tokens for u in updates if u.entropy_tokens) / ent_tokens
            if ent_tokens
            else float("nan")
        ),
        # TRL's `completions/clipped_ratio`: share of completions that hit max_new_tokens
        "train/clipped_ratio": sum(cut) / len(cut) if cut else float("nan"),
        "train/completion_len": everything.tokens_generated / max(len(everything.completions), 1),
        "train/lr": updates[-1].lr if updates else cfg.lr,
        "train/questions_unseen": sum(dr.unseen for dr in draws),
        # questions an SFT phase of this run had trained on (grpo.fresh_questions puts them last)
        "train/questions_sft_trained": sum(dr.sft_trained for dr in draws),
        "train/questions_mean_pass_rate": (
            sum(seen_rates) / len(seen_rates) if seen_rates else float("nan")
        ),
        "perf/gen_tokens_per_s": everything.tokens_generated / max(gen_seconds, 1e-9),
        "perf/weight_sync_s": everything.sync_seconds,
        "perf/tokens_per_s": tokens_trained / max(seconds - gen_seconds, 1e-9),
    }
    for name, vals in everything.components.items():
        got = [v for v in vals if v is not None]
        metrics[f"train/reward/{name}"] = sum(got) / len(got) if got else float("nan")
    for key, vals in hook_metrics.items():  # hooks' metrics, averaged over the phase's calls
        metrics[key] = sum(vals) / len(vals)
    return PhaseResult(
        "grpo",
        metrics,
        examples_seen=len(everything.examples) // G,
        tokens_trained=tokens_trained,
        tokens_generated=everything.tokens_generated,
        seconds=seconds,
        steps=steps,
        samples=rollout_samples(shown[0], shown[1], G, cfg.samples_to_log),
    )
