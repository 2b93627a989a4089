"""LM head and cross-entropy in one pass, chunk by chunk, for a frozen LM head.

``F.cross_entropy(hidden @ W.T, targets, reduction="none")`` builds the (N, V) logits, a
log-softmax copy of them, and in backward a zero-filled (N, V) gradient and the
log-softmax backward: five passes over N x 49k floats for SmolLM2, most of a gigabyte each.
With a frozen head (LoRA does not touch it) the only gradient needed is the one for
``hidden``, and for row i it is ``g_i * (softmax(z_i) - onehot(y_i)) @ W``, linear in the
upstream gradient ``g_i``. So the forward computes, chunk by chunk, the loss and the
unit-gradient rows ``(softmax - onehot) @ W`` (N, H) while the logits are still in cache
order, and the backward only scales those rows by ``g``. Any per-token weighting applied
afterwards (CHORD's phi, a mean, a sum) stays exact.

Same FLOPs as the plain path (the backward's matmul moves into the forward); no (N, V)
tensor outlives its chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 1024  # rows per chunk: (1024, 49k) fp32 logits are 200 MB


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):  # type: ignore[override]
        want_grad = ctx.needs_input_grad[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # softmax maths: fp32 or wider
        ce = torch.empty(hidden.size(0), dtype=acc, device=hidden.device)
        unit = torch.empty_like(hidden) if want_grad else None  # (N, H)
        for s in range(0, hidden.size(0), chunk):
            h, y = hidden[s : s + chunk], targets[s : s + chunk]
            logits = F.linear(h, weight).to(acc)  # (c, V); autocast applies to the matmul
            rows = torch.arange(y.numel(), device=y.device)
            picked = logits[rows, y]  # (c,)
            top = logits.amax(dim=-1, keepdim=True)  # (c, 1)
            exp = logits.sub_(top).exp_()  # in place: no second (c, V) buffer
            total = exp.sum(dim=-1, keepdim=True)  # (c, 1)
            ce[s : s + chunk] = (top + total.log()).squeeze(-1) - picked  # logsumexp - z_y
            if unit is not None:
                probs = exp.div_(total)  # softmax
                probs[rows, y] -= 1.0
                unit[s : s + chunk] = F.linear(probs.to(weight.dtype), weight.t()).to(unit.dtype)
        ctx.save_for_backward(unit)
        return ce

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor):  # type: ignore[override]
        (unit,) = ctx.saved_tensors
        grad_hidden = unit * grad_ce.unsqueeze(-1).to(unit.dtype)
        return grad_hidden, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK
) -> torch.Tensor:
    """Per-token ``cross_entropy(hidden @ weight.T, targets)``: (N, H), (V, H), (N,) -> (N,), fp32 or wider.

    Equal to the plain computation in value and in the gradient for ``hidden`` (tested).
    ``weight`` must be frozen; with a trainable head use the plain path.
    """
    if weight.requires_grad and torch.is_grad_enabled():
        raise ValueError("linear_cross_entropy needs a frozen LM head (weight.requires_grad)")
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk)
