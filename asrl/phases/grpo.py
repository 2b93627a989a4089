"""The GRPO phase: sample groups, score, group-normalise, clipped policy-gradient update.

The maths (``group_advantages``, ``grpo_loss``) are pure functions matching TRL 1.x for the
same ``loss_type``; ``run_grpo_phase`` wires them to rollouts and the optimizer.

A phase is ``rounds_per_phase`` rounds. A round draws ``questions_per_epoch`` questions
(uniformly, or by their recent pass rate: ``choose_questions``, ``PassRates``), samples
``num_generations`` completions of each and scores them; with ``filter_zero_std`` (DAPO's
dynamic sampling) groups whose rewards are all equal are dropped and more questions are
sampled, up to ``max_resample_rounds`` times; then ``grpo_update`` takes
``steps_per_round`` x ``num_iterations`` optimizer steps on what the round kept.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from asrl import distributed
from asrl.config import GRPOConfig
from asrl.data.render import prompt_ids
from asrl.generation import generate
from asrl.models import Policy
from asrl.phases.common import (
    backward,
    clip_and_step,
    completion_logps,
    finite_mean,
    set_lr,
    shared_prompt_logps,
)
from asrl.rewards import RewardSet
from asrl.tracking import console
from asrl.types import Example, PhaseResult, Rollout


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """A_i = (r_i - mean of its group) / (std + 1e-4). rewards (N,) grouped -> (N,).

    ``scale``: "group" divides by the group's std, "batch" by the whole batch's std, "none"
    leaves the centred reward (Dr. GRPO). std is the unbiased one, as in TRL. NaN rewards
    (every function returned None) are ignored in the statistics and get advantage 0.
    """
    grouped = rewards.view(-1, group_size)  # (P, G)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    adv = grouped - mean
    if scale == "group":
        adv = adv / (_nanstd(grouped, dim=1) + 1e-4)
    elif scale == "batch":
        adv = adv / (_nanstd(rewards.view(1, -1), dim=1) + 1e-4)
    elif scale != "none":
        raise ValueError(f"scale_rewards must be group, batch or none, not {scale!r}")
    return torch.nan_to_num(adv.reshape(-1), nan=0.0)


def _nanstd(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Unbiased std along ``dim`` ignoring NaN, kept as a column. (P, G) -> (P, 1)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True) * count / (count - 1).clamp(min=1)
    return var.sqrt()


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Groups whose rewards are all equal: (N,) grouped -> (P,) bool.

    Equal means std < 1e-6 with NaN rewards ignored, as in ``group_advantages``: a group
    with fewer than two scored completions counts as equal too (its advantages are all 0).
    """
    std = _nanstd(rewards.view(-1, group_size), dim=1).squeeze(1)
    return ~(std >= 1e-6)  # NaN std (nothing scored): equal


def truncated(completion_ids: Sequence[Sequence[int]], stop_ids: Collection[int]) -> list[bool]:
    """Completions that hit max_new_tokens: the last token is no end-of-sequence or padding
    token (TRL's ``is_truncated``, trl/trainer/grpo_trainer.py). An empty one is not."""
    return [bool(c) and c[-1] not in stop_ids for c in completion_ids]


def decayed_lr(lr: float, final_ratio: float, step: int, total: int) -> float:
    """Linear decay from ``lr`` at step 0 to ``lr * final_ratio`` at step ``total - 1``."""
    return lr * (1.0 - (1.0 - final_ratio) * (step / max(total - 1, 1)))


def group_pass_fractions(
    scores: Sequence[float | None], group_size: int, threshold: float
) -> list[float | None]:
    """Per group: the fraction of its scored completions with score >= ``threshold``
    (None for a group with no score at all)."""
    out: list[float | None] = []
    for g in range(0, len(scores), group_size):
        got = [s for s in scores[g : g + group_size] if s is not None and not math.isnan(s)]
        out.append(sum(s >= threshold for s in got) / len(got) if got else None)
    return out


@dataclass
class PassRates:
    """Each train record's recent GRPO pass rate, keyed by record id.

    ``observe`` folds in a round: p <- (1 - alpha) p + alpha * f, f = the fraction of the
    record's group that passed (``group_pass_fractions`` of the correctness component, or
    of the total reward when no correctness function is configured); the first observation
    sets p = f. Run state: saved in checkpoints (``state``/``restore``); a record added
    later simply has no entry yet.
    """

    rates: dict[str, float] = field(default_factory=dict)

    def get(self, record_id: str) -> float | None:
        return self.rates.get(record_id)

    def observe(self, ro: Rollout, group_size: int, threshold: float, alpha: float) -> None:
        scores = ro.components.get("correctness")
        if scores is None:
            scores = ro.rewards
        fracs = group_pass_fractions(scores, group_size, threshold)
        for g, f in enumerate(fracs):
            if f is None:
                continue
            rid = ro.examples[g * group_size].id
            old = self.rates.get(rid)
            self.rates[rid] = f if old is None else (1.0 - alpha) * old + alpha * f

    def state(self) -> dict[str, Any]:
        return {"rates": dict(self.rates)}

    def restore(self, state: dict[str, Any]) -> None:
        self.rates = {str(k): float(v) for k, v in state.get("rates", {}).items()}


def selection_weight(p: float | None, floor: float) -> float:
    """p (1 - p) + floor: records solved sometimes (informative groups) weigh most; a
    record never seen counts as p = 0.5 (the largest weight: new data is explored first)."""
    p = 0.5 if p is None else p
    return p * (1.0 - p) + floor


def choose_questions(
    train: Sequence[Example],
    k: int,
    rng: random.Random,
    cfg: GRPOConfig,
    rates: PassRates,
    exclude: Collection[int] = (),
) -> list[int]:
    """Indices of ``k`` distinct train records, none in ``exclude``; deterministic given rng.

    uniform: ``rng.sample``. pass_rate: weighted sampling without replacement (Efraimidis-
    Spirakis: the k largest log(u) / w, u uniform) with w = ``selection_weight``.
    """
    pool = [i for i in range(len(train)) if i not in exclude] if exclude else range(len(train))
    k = min(k, len(pool))
    if k <= 0:
        return []
    if cfg.question_selection == "uniform":
        return rng.sample(pool, k)
    keys = []
    for i in pool:
        w = selection_weight(rates.get(train[i].id), cfg.pass_rate_floor)
        u = rng.random()
        keys.append((math.log(u) / w if u > 0 else -math.inf, -i))
    keys.sort(reverse=True)
    return [-j for _, j in keys[:k]]


def grpo_loss(
    logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    loss_type: str = "grpo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    max_completion_length: int | None = None,
    num_items: int | torch.Tensor | None = None,
    kl_ratio_correction: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped GRPO loss for one micro-batch. logps/old/ref/mask (B, T), advantages (B,).

    per-token: -min(rho * A, clip(rho, 1-eps_low, 1+eps_high) * A) + beta * KL_k3, with
    rho = exp(logp - old) (old = logp.detach() on-policy), KL_k3 = e^(ref-logp) - (ref-logp) - 1.
    Aggregation (TRL's): grpo = mean over sequences of token means; bnpo = token mean;
    dr_grpo = sum / (B * max_completion_length); dapo = sum / num_items (completion tokens
    in the whole optimizer step, so micro-batches add up to one big batch).
    ``kl_ratio_correction`` multiplies KL_k3 by rho (TRL's ``use_bias_correction_kl``, on by
    default in TRL >= 1.x; it changes the KL gradient even on-policy, where rho == 1).
    """
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages.unsqueeze(1)  # (B, 1)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)  # (B, T)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps")
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        if kl_ratio_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo needs max_completion_length")
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    elif loss_type == "dapo":
        n = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=mask.dtype)
        loss = (per_token * mask).sum() / n.clamp(min=1.0)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    with torch.no_grad():
        denom = mask.sum().clamp(min=1.0)
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
        stats = {
            "clip_ratio": float(((low + high) * mask).sum() / denom),
            "kl": float((kl * mask).sum() / denom) if kl is not None else 0.0,
        }
    return loss, stats


# --------------------------------------------------------------------------------------
# the phase runner


@dataclass
class _Batch:
    """Prompt left-padded + completion right-padded, ready for one forward. Rows: completions."""

    input_ids: torch.Tensor  # (B, P + C)
    attention_mask: torch.Tensor  # (B, P + C)
    completion_mask: torch.Tensor  # (B, C)


def _pack(prompts: list[list[int]], completions: list[list[int]], pad: int) -> _Batch:
    P = max(len(p) for p in prompts)
    C = max(max((len(c) for c in completions), default=1), 1)
    B = len(prompts)
    ids = torch.full((B, P + C), pad, dtype=torch.long)
    attn = torch.zeros((B, P + C), dtype=torch.long)
    cmask = torch.zeros((B, C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p) : P] = torch.tensor(p)
        attn[i, P - len(p) : P] = 1
        if c:
            ids[i, P : P + len(c)] = torch.tensor(c)
            attn[i, P : P + len(c)] = 1
            cmask[i, : len(c)] = 1
    return _Batch(ids, attn, cmask)


def rollout(
    policy: Policy,
    examples: list[Example],
    cfg: GRPOConfig,
    rewards: RewardSet,
    seed: int,
    system_prompt: str | None = None,
) -> Rollout:
    """Sample ``num_generations`` completions per example (all groups in one batch) and score."""
    start = time.perf_counter()
    G = cfg.num_generations
    if not examples:  # a process with no share of this round's questions
        if policy.sharded:  # it still takes part in every decoding step
            generate(policy, [], cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=seed)
        return Rollout([], [], [], [], [], {part.name: [] for part in rewards.parts})
    expanded = [ex for ex in examples for _ in range(G)]  # group by group
    p_ids = [prompt_ids(policy.tokenizer, ex, system_prompt) for ex in expanded]
    c_ids = generate(
        policy,
        p_ids,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=seed,
    )
    texts = policy.tokenizer.batch_decode(c_ids, skip_special_tokens=True)
    totals, components = rewards.score(expanded, texts)
    return Rollout(
        expanded,
        texts,
        p_ids,
        c_ids,
        totals,
        components,
        tokens_generated=sum(len(c) for c in c_ids),
        seconds=time.perf_counter() - start,
    )


def gather_rollout(d: distributed.Dist, ro: Rollout, group_size: int) -> Rollout:
    """Every process's groups, back in question order (the inverse of ``d.shard``)."""
    if not d.active:
        return ro
    fields = ("examples", "completions", "prompt_ids", "completion_ids", "rewards")
    mine = {f: _groups(getattr(ro, f), group_size) for f in fields}
    mine["components"] = {k: _groups(v, group_size) for k, v in ro.components.items()}
    mine["stats"] = (ro.tokens_generated, ro.seconds)
    shares = d.gather(mine)
    merged = {f: _flat(d.unshard([s[f] for s in shares])) for f in fields}
    components = {k: _flat(d.unshard([s["components"][k] for s in shares])) for k in ro.components}
    return Rollout(
        **merged,
        components=components,
        tokens_generated=sum(s["stats"][0] for s in shares),
        seconds=max(s["stats"][1] for s in shares),
    )


def _groups(rows: list, size: int) -> list[list]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _flat(groups: list[list]) -> list:
    return [x for g in groups for x in g]


def concat_rollouts(ros: Sequence[Rollout]) -> Rollout:
    """Several rollouts as one, in order (token counts and seconds add up)."""
    names = list(ros[0].components) if ros else []
    return Rollout(
        [x for r in ros for x in r.examples],
        [x for r in ros for x in r.completions],
        [x for r in ros for x in r.prompt_ids],
        [x for r in ros for x in r.completion_ids],
        [x for r in ros for x in r.rewards],
        {k: [x for r in ros for x in r.components[k]] for k in names},
        tokens_generated=sum(r.tokens_generated for r in ros),
        seconds=sum(r.seconds for r in ros),
    )


def select_groups(ro: Rollout, keep: Sequence[bool], group_size: int) -> Rollout:
    """The groups of ``ro`` where ``keep`` (one flag per group) is true, in order.

    ``tokens_generated`` and ``seconds`` stay those of the whole rollout (what it cost)."""
    rows = [i for g, k in enumerate(keep) if k for i in range(g * group_size, (g + 1) * group_size)]
    return Rollout(
        [ro.examples[i] for i in rows],
        [ro.completions[i] for i in rows],
        [ro.prompt_ids[i] for i in rows],
        [ro.completion_ids[i] for i in rows],
        [ro.rewards[i] for i in rows],
        {k: [v[i] for i in rows] for k, v in ro.components.items()},
        tokens_generated=ro.tokens_generated,
        seconds=ro.seconds,
    )


def _logps(
    policy: Policy, b: _Batch, temperature: float, with_entropy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    dev = policy.device
    # shared_prompt_logps makes one or two forward calls depending on the batch; sharded
    # processes must all make the same calls, so they take one each
    logps = completion_logps if policy.sharded else shared_prompt_logps
    with policy.autocast():
        return logps(
            policy.model,
            b.input_ids.to(dev),
            b.attention_mask.to(dev),
            b.completion_mask.size(1),
            temperature,
            with_entropy=with_entropy,
        )


@dataclass
class GRPOHooks:
    """Extension points for hybrid methods (CHORD, ReLIFT); all optional.

    ``loss_scale(k)`` multiplies the GRPO loss of optimizer step k (counted from 0 over the
    whole phase, all rounds); ``extra_backward(k)`` adds its own gradients before step k's
    optimizer step and returns metrics; ``after_round(rollout)`` runs after each round's
    updates, with everything the round sampled (filtered groups too), and returns metrics.
    """

    loss_scale: Callable[[int], float] | None = None
    extra_backward: Callable[[int], dict[str, float]] | None = None
    after_round: Callable[[Rollout], dict[str, float]] | None = None


@dataclass
class UpdateStats:
    """What ``grpo_update`` did: per-step losses, mean clip ratio / KL, tokens, steps."""

    losses: list[float]
    clip_ratio: float
    kl: float
    tokens: int
    steps: int
    hook_metrics: dict[str, list[float]]
    advantages: torch.Tensor  # (N,), one per completion of the round
    micro_batches: int = 0  # over all processes: clip_ratio and kl are means over these
    entropy: float = float("nan")  # mean entropy of the loss's completion tokens
    entropy_tokens: int = 0  # the tokens it is a mean over
    lr: float = 0.0  # the learning rate of the last step
    grad_norms: list[float] = field(default_factory=list)  # pre-clip, one per step


def grpo_update(
    policy: Policy,
    ro: Rollout,
    cfg: GRPOConfig,
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    hooks: GRPOHooks | None = None,
    bar: tqdm | None = None,
    step0: int = 0,
    total_steps: int | None = None,
) -> UpdateStats:
    """``steps_per_round`` x ``num_iterations`` optimizer steps on one scored round.

    The round's completions are shuffled once and dealt into ``steps_per_round`` disjoint
    steps; ``num_iterations`` passes repeat those same steps (TRL: the generation batch is
    shuffled once, split into ``steps_per_generation`` slices, reused ``num_iterations``
    times). The ratio's "old" log-probs are computed once, before any step, for every step
    that is not on-policy (all of them when num_iterations > 1; the first step of a single
    pass uses the current log-probs, detached, as TRL does).

    The LR of step k is ``decayed_lr(lr, lr_final_ratio, step0 + k, total_steps)``; hooks
    see ``step0 + k``. Defaults: this round's steps alone.

    Every process holds the whole round; each computes its share of every step's
    micro-batches and ``clip_and_step`` sums the gradients, so N processes take the same
    steps as one.
    """
    hooks = hooks or GRPOHooks()
    hook_metrics: dict[str, list[float]] = {}
    d = distributed.current()
    adv = group_advantages(
        torch.tensor(ro.rewards, dtype=torch.float32), cfg.num_generations, cfg.scale_rewards
    )
    tok = policy.tokenizer
    pad = tok.pad_token_id
    n = len(ro.completions)
    stop = {t for t in (tok.eos_token_id, pad) if t is not None}
    masked = truncated(ro.completion_ids, stop) if cfg.mask_truncated_completions else [False] * n
    loss_tokens = [0 if m else len(c) for m, c in zip(masked, ro.completion_ids)]
    order = list(range(n))
    rng.shuffle(order)  # steps see a mix of groups, as TRL shuffles the generation batch
    steps = [order[i :: cfg.steps_per_round] for i in range(cfg.steps_per_round)]
    steps = [s for s in steps if s]
    passes = cfg.num_iterations
    total = total_steps if total_steps is not None else len(steps) * passes
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high

    def micro(idx: list[int]) -> list[list[int]]:
        # A micro-batch costs rows x (longest prompt + longest completion): rows of similar
        # length share one (a step's gradient is the same sum whatever the grouping).
        idx = sorted(idx, key=lambda i: (len(ro.prompt_ids[i]), len(ro.completion_ids[i])))
        return [idx[i : i + cfg.micro_batch_size] for i in range(0, len(idx), cfg.micro_batch_size)]

    step_mbs = [micro(step_idx) for step_idx in steps]  # the same grouping for every pass

    def batch_of(mb: list[int]) -> _Batch:
        return _pack([ro.prompt_ids[i] for i in mb], [ro.completion_ids[i] for i in mb], pad)

    def loss_mask(b: _Batch, mb: list[int]) -> torch.Tensor:
        # mask_truncated_completions: a truncated completion's row is left out of the loss
        keep = torch.tensor([not masked[i] for i in mb], dtype=b.completion_mask.dtype)
        return b.completion_mask * keep.unsqueeze(1)

    dummy = _pack([[pad]], [[pad]], pad)

    # "old" log-probs are needed for every step the policy has moved before (all steps with
    # several passes); the reference only when beta > 0. Both without gradients, before any
    # update.
    def needs_old(k: int) -> bool:
        return k > 0 or passes > 1

    old: dict[tuple[int, ...], torch.Tensor] = {}
    ref: dict[tuple[int, ...], torch.Tensor] = {}
    with torch.no_grad():
        for k, mbs in enumerate(step_mbs):
            for mb in d.padded_shard(mbs):  # sharded: None is a dummy, to keep in step
                if not needs_old(k) and cfg.beta == 0:
                    continue  # on-policy: old = logps.detach(), no extra pass
                if mb is None:
                    for _ in range(needs_old(k) + (cfg.beta > 0)):
                        _logps(policy, dummy, cfg.temperature)
                    continue
                b = batch_of(mb)
                if needs_old(k):
                    old[tuple(mb)] = _logps(policy, b, cfg.temperature)
                if cfg.beta > 0:
                    with policy.reference():
                        ref[tuple(mb)] = _logps(policy, b, cfg.temperature)

    params = policy.trainable_parameters()
    policy.model.train()
    losses, norms, stats_acc, tokens = [], [], {"clip_ratio": 0.0, "kl": 0.0}, 0
    ent_sum, ent_tokens = 0.0, 0.0
    n_mb = 0
    lr = cfg.lr
    g = step0  # the step's index in the phase
    for _ in range(passes):
        for k, step_idx in enumerate(steps):
            lr = decayed_lr(cfg.lr, cfg.lr_final_ratio, g, total)
            set_lr(optimizer, lr)
            mbs = step_mbs[k]
            num_items = sum(loss_tokens[i] for i in step_idx)
            step_loss = 0.0
            scale = hooks.loss_scale(g) if hooks.loss_scale else 1.0
            for mb in d.padded_shard(mbs):  # this process's micro-batches; len(mbs) is global
                if mb is None:  # in lockstep, and this process has fewer: zero, through the model
                    backward(_logps(policy, dummy, cfg.temperature).sum() * 0.0)
                    continue
                b = batch_of(mb)
                logps, entropy = _logps(policy, b, cfg.temperature, with_entropy=True)
                mask = loss_mask(b, mb).to(logps.device)
                loss, st = grpo_loss(
                    logps,
                    adv[mb].to(logps.device),
                    mask,
                    old_logps=old.get(tuple(mb)),
                    ref_logps=ref.get(tuple(mb)),
                    loss_type=cfg.loss_type,
                    epsilon_low=cfg.epsilon,
                    epsilon_high=eps_high,
                    beta=cfg.beta,
                    max_completion_length=cfg.max_new_tokens,
                    num_items=num_items,
                    kl_ratio_correction=cfg.kl_ratio_correction,
                )
                if cfg.loss_type != "dapo":  # dapo is already normalised over the whole step
                    loss = loss / len(mbs)
                loss = loss * scale
                backward(loss)
                step_loss += loss.item()
                tokens += int(b.attention_mask.sum())
                ent_sum += float((entropy * mask).sum())
                ent_tokens += float(mask.sum())
                for key in stats_acc:
                    stats_acc[key] += st[key]
                n_mb += 1
            if hooks.extra_backward:
                for key, v in hooks.extra_backward(g).items():
                    hook_metrics.setdefault(key, []).append(v)
            step_loss = d.sum([step_loss])[0]
            norms.append(clip_and_step(params, optimizer, cfg.max_grad_norm, step_loss))
            losses.append(step_loss)
            g += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}")
    tokens, n_mb, clip_sum, kl_sum, ent_sum, ent_tokens = d.sum(
        [tokens, n_mb, stats_acc["clip_ratio"], stats_acc["kl"], ent_sum, ent_tokens]
    )
    return UpdateStats(
        losses,
        clip_sum / max(n_mb, 1),
        kl_sum / max(n_mb, 1),
        int(tokens),
        len(losses),
        hook_metrics,
        adv,
        micro_batches=int(n_mb),
        entropy=ent_sum / ent_tokens if ent_tokens else float("nan"),
        entropy_tokens=int(ent_tokens),
        lr=lr,
        grad_norms=norms,
    )


@dataclass
class _RoundDraw:
    """What one round sampled: ``trained`` (the groups kept for the update), ``sampled``
    (every gathered rollout, filtered groups too) and the selection's counts."""

    trained: Rollout
    sampled: list[Rollout]
    resamples: int = 0  # extra rollouts after the first (dynamic sampling)
    filtered: int = 0  # groups dropped for equal rewards
    unseen: int = 0  # questions without a pass rate when chosen
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
        idx = choose_questions(train, want - informative, rng, cfg, rates, used)
        if not idx:
            break  # every train record was tried this round
        used.update(idx)
        questions = [train[i] for i in idx]
        for q in questions:
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
) -> PhaseResult:
    """``rounds_per_phase`` rounds: sample (``_sample_round``), then ``grpo_update``.

    The LR decays linearly from ``lr`` to ``lr * lr_final_ratio`` across all the phase's
    planned steps (rounds x steps_per_round x num_iterations; the paper's "slight decay
    during GRPO"); the loop resets it next epoch. A round left with no informative group
    (dynamic sampling) takes no step: it is logged (``train/skipped_updates``) and the
    phase goes on. ``pass_rates``: the run's record pass rates, updated in place.
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
        draw = _sample_round(policy, train, cfg, rewards, rng, seed, r, rates, system_prompt)
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
        "train/questions_mean_pass_rate": (
            sum(seen_rates) / len(seen_rates) if seen_rates else float("nan")
        ),
        "perf/gen_tokens_per_s": everything.tokens_generated / max(gen_seconds, 1e-9),
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


def rollout_samples(
    ro: Rollout, advantages: torch.Tensor, group_size: int, n: int
) -> list[dict[str, Any]]:
    """The round's first ``n`` completions, for a human to read. Rollouts are laid out group
    by group, so completions of one prompt sit side by side with the rewards and advantages
    that rank them. ``rewards``: each reward function's unweighted value (None: no opinion)."""
    return [
        {
            "id": ro.examples[i].id,
            "type": ro.examples[i].type,
            "group": i // group_size,
            "prompt": ro.examples[i].prompt_text,
            "reference": ro.examples[i].response,
            "output": ro.completions[i],
            "reward": ro.rewards[i],
            "rewards": {name: values[i] for name, values in ro.components.items()},
            "advantage": float(advantages[i]),
        }
        for i in range(min(n, len(ro.completions)))
    ]
