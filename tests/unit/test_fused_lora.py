"""The fused LoRA forward equals PEFT's, in outputs and in every LoRA gradient."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import Linear as LoraLinear

from asrl.config import LoraConfig, ModelConfig
from asrl.model.fused_lora import FusedLoraLinear
from asrl.model.loading import Policy, load_policy


def _policy(model: str, dropout: float = 0.0) -> Policy:
    cfg = ModelConfig(name=model, autocast="none", lora=LoraConfig(dropout=dropout))
    policy = load_policy(cfg, seed=0)
    with torch.no_grad():  # PEFT starts B at zero, which would hide a wrong B path
        g = torch.Generator().manual_seed(0)
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=g)
    return policy


def _set_class(policy: Policy, cls: type) -> None:
    for m in policy.model.modules():
        if isinstance(m, LoraLinear):
            m.__class__ = cls


def _loss_and_grads(policy: Policy, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    policy.model.zero_grad(set_to_none=True)
    logits = policy.model(input_ids=ids, use_cache=False).logits
    loss = (logits.float().log_softmax(-1)[..., 3] * torch.linspace(-1, 1, ids.size(1))).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("model", ["tiny-random-llama", "tiny-random-qwen3"])
def test_fused_forward_and_gradients_equal_peft(model: str) -> None:
    policy = _policy(model)
    fused = [m for m in policy.model.modules() if isinstance(m, FusedLoraLinear)]
    assert fused, "load_policy did not switch the LoRA linears"
    ids = torch.randint(
        0, policy.model.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0)
    )
    out_f, grads_f = _loss_and_grads(policy, ids)
    _set_class(policy, LoraLinear)
    out_p, grads_p = _loss_and_grads(policy, ids)
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    assert grads_f.keys() == grads_p.keys() and any("lora_A" in n for n in grads_f)
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)


def test_merged_disabled_and_dropout_take_peft_forward() -> None:
    policy = _policy("tiny-random-llama")
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    policy.model.eval()
    with torch.no_grad():
        plain = policy.model(input_ids=ids).logits
        with policy.reference():
            ref = policy.model(input_ids=ids).logits
        policy.merge_for_generation = True
        with policy.merged():
            merged = policy.model(input_ids=ids).logits
        again = policy.model(input_ids=ids).logits
    assert not torch.allclose(plain, ref, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(merged, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, plain, rtol=1e-5, atol=1e-5)  # unmerged again
    _set_class(policy, LoraLinear)
    with torch.no_grad(), policy.reference():
        torch.testing.assert_close(policy.model(input_ids=ids).logits, ref)

    dropped = _policy("tiny-random-llama", dropout=0.5)
    layer = next(m for m in dropped.model.modules() if isinstance(m, FusedLoraLinear))
    assert layer._plain_adapter() is None  # dropout: PEFT's own forward
