"""GRPO's maths as pure functions, matching TRL 1.x for the same ``loss_type``: group-relative
advantages, the clipped policy-gradient loss (grpo, bnpo, dr_grpo, dapo) with its optional KL
term, and the in-phase LR decay."""

from __future__ import annotations

import torch


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


def decayed_lr(lr: float, final_ratio: float, step: int, total: int) -> float:
    """Linear decay from ``lr`` at step 0 to ``lr * final_ratio`` at step ``total - 1``."""
    return lr * (1.0 - (1.0 - final_ratio) * (step / max(total - 1, 1)))


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
