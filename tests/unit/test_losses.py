"""Hand-computed expectations for the maths: SFT masking, group advantages, GRPO losses."""

import math

import pytest
import torch

from asrl.algo.grpo_loss import group_advantages, grpo_loss
from asrl.data.render import IGNORE
from asrl.phases.sft import sft_loss


def test_sft_loss_counts_response_tokens_only():
    # V=2, one sequence of 4 tokens; positions 0..2 predict tokens 1..3.
    # Logits are 0 everywhere except position 2 which puts log(3) on class 1 -> p(1)=3/4.
    logits = torch.zeros(1, 4, 2)
    logits[0, 2, 1] = math.log(3.0)
    # labels: prompt = tokens 0,1 (masked); response = tokens 2,3 -> predicted at positions 1,2
    labels = torch.tensor([[IGNORE, IGNORE, 0, 1]])
    # position 1 predicts 0 with p=1/2 -> ln2 ; position 2 predicts 1 with p=3/4 -> -ln(3/4)
    expected = (math.log(2) - math.log(0.75)) / 2
    assert sft_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # if the prompt were not masked, position 0 (ln2) would enter: a different value
    unmasked = torch.tensor([[IGNORE, 0, 0, 1]])
    assert sft_loss(logits, unmasked).item() != pytest.approx(expected, rel=1e-3)


def test_sft_loss_num_items_makes_accumulation_exact():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 5)
    labels = torch.randint(0, 5, (4, 6))
    labels[:, :2] = IGNORE
    labels[1, 4:] = IGNORE  # uneven lengths
    n = int((labels[:, 1:] != IGNORE).sum())
    full = sft_loss(logits, labels)
    halves = sft_loss(logits[:2], labels[:2], n) + sft_loss(logits[2:], labels[2:], n)
    assert halves.item() == pytest.approx(full.item(), rel=1e-6)


def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 3.0, 3.0])  # groups of 2: [1, 0], [3, 3]
    a = group_advantages(r, 2, "group")
    s = math.sqrt(0.5)  # unbiased std of [1, 0]
    assert a.tolist() == pytest.approx([0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0.0, 0.0], rel=1e-6)
    assert group_advantages(r, 2, "none").tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    # batch std of [1, 0, 3, 3]: mean 1.75, unbiased var = (0.5625+3.0625+1.5625*2)/3 = 2.25
    b = group_advantages(r, 2, "batch")
    assert b[0].item() == pytest.approx(0.5 / (1.5 + 1e-4), rel=1e-6)


def test_group_advantages_ignore_missing_rewards():
    r = torch.tensor([1.0, float("nan"), 0.0, 2.0, 2.0, 2.0])  # groups of 3
    a = group_advantages(r, 3, "none")
    assert a.tolist() == pytest.approx([0.5, 0.0, -0.5, 0.0, 0.0, 0.0])


# B=2, T=3: row 0 has 2 completion tokens, row 1 has 3. On-policy, ratio = 1, so the
# per-token loss is -A: row 0 -> -1 per token, row 1 -> +2 per token (A = [1, -2]).
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
ADV = torch.tensor([1.0, -2.0])


@pytest.mark.parametrize(
    ("loss_type", "kwargs", "expected"),
    [
        ("grpo", {}, (-1 + 2) / 2),  # mean of per-sequence token means
        ("bnpo", {}, (-2 + 6) / 5),  # token mean over the batch
        ("dr_grpo", {"max_completion_length": 4}, (-2 + 6) / (2 * 4)),
        ("dapo", {"num_items": 10}, (-2 + 6) / 10),  # tokens in the whole optimizer step
        ("dapo", {}, (-2 + 6) / 5),
    ],
)
def test_grpo_loss_aggregation(loss_type, kwargs, expected):
    logps = torch.full((2, 3), -1.0, requires_grad=True)
    loss, stats = grpo_loss(logps, ADV, MASK, loss_type=loss_type, **kwargs)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["clip_ratio"] == 0.0


def test_grpo_gradient_on_policy():
    # d loss / d logp_t = -A_i / |o_i| for the grpo aggregation divided by B
    logps = torch.full((2, 3), -1.0, requires_grad=True)
    loss, _ = grpo_loss(logps, ADV, MASK, loss_type="grpo")
    loss.backward()
    expected = torch.tensor([[-1 / 2 / 2, -1 / 2 / 2, 0.0], [2 / 3 / 2] * 3])
    assert torch.allclose(logps.grad, expected)


def test_grpo_clipping():
    # A > 0 with ratio 1.5: clipped to 1 + 0.2 -> loss -1.2, zero gradient.
    old = torch.zeros(1, 1)
    logps = torch.full((1, 1), math.log(1.5), requires_grad=True)
    loss, stats = grpo_loss(logps, torch.tensor([1.0]), torch.ones(1, 1), old_logps=old)
    assert loss.item() == pytest.approx(-1.2, rel=1e-6)
    loss.backward()
    assert logps.grad.abs().item() == 0.0
    assert stats["clip_ratio"] == 1.0
    # A < 0 with ratio 0.5: min(0.5 * -1, 0.8 * -1) = -0.8 -> loss 0.8 (pessimistic bound)
    logps = torch.full((1, 1), math.log(0.5), requires_grad=True)
    loss, _ = grpo_loss(logps, torch.tensor([-1.0]), torch.ones(1, 1), old_logps=old)
    assert loss.item() == pytest.approx(0.8, rel=1e-6)
    # DAPO clip-higher: eps_high = 0.28 lets ratio 1.25 through unclipped -> loss -1.25
    logps = torch.full((1, 1), math.log(1.25), requires_grad=True)
    loss, _ = grpo_loss(
        logps, torch.tensor([1.0]), torch.ones(1, 1), old_logps=old, epsilon_high=0.28
    )
    assert loss.item() == pytest.approx(-1.25, rel=1e-6)


def test_grpo_kl_term_k3():
    # ref - logp = d = ln 2: KL = e^d - d - 1 = 2 - ln2 - 1 ; with A = 0 only KL remains.
    logps = torch.zeros(1, 2)
    ref = torch.full((1, 2), math.log(2.0))
    loss, stats = grpo_loss(logps, torch.tensor([0.0]), torch.ones(1, 2), ref_logps=ref, beta=0.5)
    kl = 2 - math.log(2) - 1
    assert stats["kl"] == pytest.approx(kl, rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * kl, rel=1e-6)
    with pytest.raises(ValueError):
        grpo_loss(logps, torch.tensor([0.0]), torch.ones(1, 2), beta=0.5)


def test_fast_sft_forward_equals_reference_loss():
    # the phase computes logits only at labelled positions; it must equal sft_loss on all logits
    from asrl.config import ModelConfig
    from asrl.data.render import collate, tokenize_example
    from asrl.model.loading import load_policy
    from asrl.phases.sft import _forward_loss
    from asrl.types import Example

    policy = load_policy(ModelConfig(name="tiny-random-llama", autocast="none"), seed=0)
    exs = [
        Example(f"e{i}", ({"role": "user", "content": "q" * (i + 1)},), "answer " * (i + 2))
        for i in range(3)
    ]
    batch = collate(
        [tokenize_example(policy.tokenizer, e) for e in exs], policy.tokenizer.pad_token_id
    )
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    with torch.no_grad():
        ref = sft_loss(
            policy.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits,
            batch["labels"],
        )
        fast = _forward_loss(policy, batch, n)
        # the weighted path (CHORD's phi) with unit weights is the same loss; half weights halve it
        unit = _forward_loss(policy, batch, n, token_weight=torch.ones_like)
        half = _forward_loss(policy, batch, n, token_weight=lambda lp: torch.full_like(lp, 0.5))
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    assert unit.item() == pytest.approx(ref.item(), rel=1e-5)
    assert half.item() == pytest.approx(ref.item() / 2, rel=1e-5)
