"""The GRPO phase: sample groups, score, group-normalise, clipped policy-gradient update.

The maths (``group_advantages``, ``grpo_loss``) are pure functions matching TRL 1.x for the
same ``loss_type``; ``run_grpo_phase`` wires them to rollouts and the optimizer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
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


def _logps(policy: Policy, b: _Batch, temperature: float) -> torch.Tensor:
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
        )


@dataclass
class GRPOHooks:
    """Extension points for hybrid methods (CHORD, ReLIFT); all optional.

    ``loss_scale(k)`` multiplies the GRPO loss of optimizer step k; ``extra_backward(k)``
    adds its own gradients before step k's optimizer step and returns metrics;
    ``after_round(rollout)`` runs after the round's updates and returns metrics.
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
    grad_norms: list[float] = field(default_factory=list)  # pre-clip, one per step


def grpo_update(
    policy: Policy,
    ro: Rollout,
    cfg: GRPOConfig,
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    hooks: GRPOHooks | None = None,
    bar: tqdm | None = None,
) -> UpdateStats:
    """``steps_per_round`` optimizer steps on one scored round (group advantages, clipped loss).

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
    pad = policy.tokenizer.pad_token_id
    order = list(range(len(ro.completions)))
    rng.shuffle(order)  # steps see a mix of groups, as TRL shuffles the generation batch
    steps = [order[i :: cfg.steps_per_round] for i in range(cfg.steps_per_round)]
    steps = [s for s in steps if s]
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high

    def micro(idx: list[int]) -> list[list[int]]:
        # A micro-batch costs rows x (longest prompt + longest completion): rows of similar
        # length share one (a step's gradient is the same sum whatever the grouping).
        idx = sorted(idx, key=lambda i: (len(ro.prompt_ids[i]), len(ro.completion_ids[i])))
        return [idx[i : i + cfg.micro_batch_size] for i in range(0, len(idx), cfg.micro_batch_size)]

    step_mbs = [micro(step_idx) for step_idx in steps]  # the same grouping for every pass

    def batch_of(mb: list[int]) -> _Batch:
        return _pack([ro.prompt_ids[i] for i in mb], [ro.completion_ids[i] for i in mb], pad)

    dummy = _pack([[pad]], [[pad]], pad)

    # "old" log-probs are needed once the policy has moved (second step on); the reference
    # only when beta > 0. Both without gradients, before any update.
    old: dict[tuple[int, ...], torch.Tensor] = {}
    ref: dict[tuple[int, ...], torch.Tensor] = {}
    with torch.no_grad():
        for k, mbs in enumerate(step_mbs):
            for mb in d.padded_shard(mbs):  # sharded: None is a dummy, to keep in step
                if k == 0 and cfg.beta == 0:
                    continue  # on-policy: old = logps.detach(), no extra pass
                if mb is None:
                    for _ in range((k > 0) + (cfg.beta > 0)):
                        _logps(policy, dummy, cfg.temperature)
                    continue
                b = batch_of(mb)
                if k > 0:
                    old[tuple(mb)] = _logps(policy, b, cfg.temperature)
                if cfg.beta > 0:
                    with policy.reference():
                        ref[tuple(mb)] = _logps(policy, b, cfg.temperature)

    params = policy.trainable_parameters()
    policy.model.train()
    losses, norms, stats_acc, tokens = [], [], {"clip_ratio": 0.0, "kl": 0.0}, 0
    n_mb = 0
    for k, step_idx in enumerate(steps):
        lr_frac = 1.0 - (1.0 - cfg.lr_final_ratio) * (k / max(len(steps) - 1, 1))
        set_lr(optimizer, cfg.lr * lr_frac)
        mbs = step_mbs[k]
        num_items = sum(len(ro.completion_ids[i]) for i in step_idx)
        step_loss = 0.0
        scale = hooks.loss_scale(k) if hooks.loss_scale else 1.0
        for mb in d.padded_shard(mbs):  # this process's micro-batches; len(mbs) is global
            if mb is None:  # in lockstep, and this process has fewer: zero, through the model
                backward(_logps(policy, dummy, cfg.temperature).sum() * 0.0)
                continue
            b = batch_of(mb)
            logps = _logps(policy, b, cfg.temperature)
            loss, st = grpo_loss(
                logps,
                adv[mb].to(logps.device),
                b.completion_mask.to(logps.device),
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
            for key in stats_acc:
                stats_acc[key] += st[key]
            n_mb += 1
        if hooks.extra_backward:
            for key, v in hooks.extra_backward(k).items():
                hook_metrics.setdefault(key, []).append(v)
        step_loss = d.sum([step_loss])[0]
        norms.append(clip_and_step(params, optimizer, cfg.max_grad_norm, step_loss))
        losses.append(step_loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
    tokens, n_mb, clip_sum, kl_sum = d.sum([tokens, n_mb, stats_acc["clip_ratio"], stats_acc["kl"]])
    return UpdateStats(
        losses,
        clip_sum / max(n_mb, 1),
        kl_sum / max(n_mb, 1),
        int(tokens),
        len(steps),
        hook_metrics,
        adv,
        norms,
    )


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
) -> PhaseResult:
    """Sample ``questions_per_epoch`` prompts, roll out, then ``steps_per_round`` updates.

    The LR decays linearly from ``lr`` to ``lr * lr_final_ratio`` across the phase's steps
    (the paper's "slight decay during GRPO"); the loop resets it next epoch.
    """
    start = time.perf_counter()
    hooks = hooks or GRPOHooks()
    d = distributed.current()  # several processes: each samples its share of the questions
    questions = rng.sample(train, min(cfg.questions_per_epoch, len(train)))
    # one bar for the phase: the rollout counts as a step (it is often half the time)
    bar = tqdm(
        total=cfg.steps_per_round + 1,
        desc=f"{desc} (sampling)",
        unit="step",
        leave=False,
        dynamic_ncols=True,
        disable=d.quiet,
    )
    policy.model.eval()  # no dropout while sampling
    own_seed = seed if d.rank == 0 else (seed + 7919 * d.rank) % 2**31
    ro = rollout(policy, d.shard(questions), cfg, rewards, own_seed, system_prompt)
    ro = gather_rollout(d, ro, cfg.num_generations)  # every process: the whole round
    bar.update(1)
    bar.set_description(desc)
    upd = grpo_update(policy, ro, cfg, optimizer, rng, hooks, bar)
    hook_metrics = upd.hook_metrics
    bar.close()
    if hooks.after_round:
        for key, v in hooks.after_round(ro).items():
            hook_metrics.setdefault(key, []).append(v)
    seconds = time.perf_counter() - start
    r = torch.tensor(ro.rewards)
    grouped = r.view(-1, cfg.num_generations)
    metrics = {
        "train/grpo_loss": sum(upd.losses) / max(len(upd.losses), 1),
        "train/grpo_grad_norm": finite_mean(upd.grad_norms),  # pre-clip; skipped steps left out
        "train/reward_mean": float(r.mean()),
        "train/reward_std": float(r.std()) if r.numel() > 1 else 0.0,
        "train/frac_zero_std_groups": float((grouped.std(dim=1) < 1e-6).float().mean()),
        "train/kl": upd.kl,
        "train/clip_ratio": upd.clip_ratio,
        "train/completion_len": ro.tokens_generated / max(len(ro.completions), 1),
        "train/lr": cfg.lr * cfg.lr_final_ratio if upd.steps > 1 else cfg.lr,
        "perf/gen_tokens_per_s": ro.tokens_generated / max(ro.seconds, 1e-9),
        "perf/tokens_per_s": upd.tokens / max(seconds - ro.seconds, 1e-9),
    }
    for name, vals in ro.components.items():
        got = [v for v in vals if v is not None]
        metrics[f"train/reward/{name}"] = sum(got) / len(got) if got else float("nan")
    for key, vals in hook_metrics.items():  # hooks' metrics, averaged over the phase's calls
        metrics[key] = sum(vals) / len(vals)
    return PhaseResult(
        "grpo",
        metrics,
        examples_seen=len(questions),
        tokens_trained=upd.tokens,
        tokens_generated=ro.tokens_generated,
        seconds=seconds,
        steps=upd.steps,
        samples=rollout_samples(ro, upd.advantages, cfg.num_generations, cfg.samples_to_log),
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
