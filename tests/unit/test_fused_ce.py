"""The fused LM-head cross-entropy equals the plain one, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from asrl.model.fused_ce import linear_cross_entropy


def _case(n: int = 37, h: int = 16, v: int = 101, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64)
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, targets


@pytest.mark.parametrize("chunk", [1, 8, 37, 1000])
def test_value_and_gradient_match_plain_for_any_upstream_gradient(chunk: int) -> None:
    hidden, weight, targets = _case()
    upstream = torch.randn(hidden.size(0), dtype=torch.float64)  # arbitrary per-token weights
    a = hidden.clone().requires_grad_()
    fused = linear_cross_entropy(a, weight, targets, chunk=chunk)
    (fused.double() * upstream).sum().backward()
    b = hidden.clone().requires_grad_()
    plain = F.cross_entropy(b @ weight.T, targets, reduction="none")
    (plain * upstream).sum().backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-8)


def test_gradient_through_a_function_of_the_loss_itself() -> None:
    """CHORD weights tokens by a function of their own log-prob: the chain rule still holds."""
    hidden, weight, targets = _case(seed=1)
    a = hidden.clone().requires_grad_()
    ce = linear_cross_entropy(a, weight, targets, chunk=5).double()
    (torch.exp(-ce) * ce).sum().backward()
    b = hidden.clone().requires_grad_()
    ce2 = F.cross_entropy(b @ weight.T, targets, reduction="none")
    (torch.exp(-ce2) * ce2).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_stays_close_to_fp32() -> None:
    hidden, weight, targets = (t.float() if t.is_floating_point() else t for t in _case(seed=2))
    a = hidden.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(a, weight, targets, chunk=16)
    fused.sum().backward()
    b = hidden.clone().requires_grad_()
    plain = F.cross_entropy(b @ weight.T, targets, reduction="none")
    plain.sum().backward()
    assert fused.dtype == torch.float32 and a.grad.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=0.05, atol=0.3)
    torch.testing.assert_close(a.grad, b.grad, rtol=0.05, atol=0.1)


def test_no_grad_and_trainable_head() -> None:
    hidden, weight, targets = _case(seed=3)
    with torch.no_grad():
        out = linear_cross_entropy(hidden, weight, targets, chunk=4)
    torch.testing.assert_close(
        out.double(), F.cross_entropy(hidden @ weight.T, targets, reduction="none")
    )
    with pytest.raises(ValueError, match="frozen LM head"):
        linear_cross_entropy(hidden, weight.clone().requires_grad_(), targets)
