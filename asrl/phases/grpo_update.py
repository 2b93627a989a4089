"""One round's GRPO update: ``steps_per_round`` x ``num_iterations`` clipped policy-gradient
optimizer steps on the round's rollouts, with the optional KL term and hooks (CHORD's SFT blend)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from asrl.algo.grpo_loss import decayed_lr, group_advantages, grpo_loss
from asrl.algo.logprobs import completion_logps, shared_prompt_logps
from asrl.config import GRPOConfig
from asrl.model.loading import Policy
from asrl.parallel import distributed
from asrl.phases.common import backward, clip_and_step, set_lr
from asrl.phases.rollouts import _Batch, _pack, truncated
from asrl.types import Rollout


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
                    # a dummy makes a real micro-batch's calls in the same adapter modes: FSDP's
                    # all-gathers must match call for call, and one process's reference pass
                    # (adapter disabled) against another's adapter pass mismatched them (CI,
                    # torch 2.13, peft 0.22: gloo "collective mismatch")
                    if needs_old(k):
                        _logps(policy, dummy, cfg.temperature)
                    if cfg.beta > 0:
                        with policy.reference():
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
