"""Our decoding loop against transformers': greedy tokens equal ``model.generate``'s, and the
top-p sampler keeps exactly TopPLogitsWarper's nucleus and samples its distribution."""

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from asrl.config import ModelConfig
from asrl.model.generation import generate, sample_top_p, top_p_keep
from asrl.model.loading import load_policy


def _hf_keep(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    return torch.isfinite(TopPLogitsWarper(top_p)(None, scores.clone()))


@pytest.mark.parametrize("sharpness", [0.3, 3.0, 12.0])  # flat (fallback) .. peaked
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_nucleus_is_transformers_nucleus(sharpness, top_p):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(16, 5000, generator=g) * sharpness
    keep = _hf_keep(scores, top_p)
    assert torch.equal(top_p_keep(scores, top_p), keep)
    for _ in range(5):
        picked = sample_top_p(scores, top_p, g)
        assert keep.gather(-1, picked[:, None]).all()  # never outside the nucleus


def test_sampled_frequencies_follow_the_filtered_softmax():
    scores = torch.tensor([[2.0, 1.5, 1.0, 0.2, -1.0, -3.0]]).repeat(20_000, 1)
    g = torch.Generator().manual_seed(1)
    picked = sample_top_p(scores, 0.9, g)
    freq = torch.bincount(picked, minlength=6).float() / len(picked)
    ref = TopPLogitsWarper(0.9)(None, scores[:1].clone()).softmax(-1)[0]
    assert torch.allclose(freq, ref, atol=0.012), (freq, ref)


@pytest.fixture(scope="module")
def policy():
    return load_policy(ModelConfig(name="tiny-random-llama"), seed=0)


def _hf_greedy(policy, prompts, n):
    tok = policy.tokenizer
    outs = []
    for p in prompts:  # one at a time: no padding on the reference side
        seq = policy.model.generate(
            input_ids=torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )[0, len(p) :].tolist()
        outs.append(seq[: seq.index(tok.eos_token_id) + 1] if tok.eos_token_id in seq else seq)
    return outs


def test_greedy_equals_transformers_generate_with_padding_and_shared_prompts(policy):
    g = torch.Generator().manual_seed(2)
    distinct = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 9, 13)]
    prompts = [distinct[0], distinct[1], distinct[0], distinct[2], distinct[0]]
    ours = generate(policy, prompts, max_new_tokens=10, greedy=True)
    assert ours == _hf_greedy(policy, prompts, 10)
    assert ours[0] == ours[2] == ours[4]


def test_sampling_is_seeded_and_shared_prompts_sample_independently(policy):
    prompts = [[5, 6, 7, 8]] * 6 + [[9, 10, 11]] * 6
    a = generate(policy, prompts, max_new_tokens=8, temperature=1.0, top_p=0.95, seed=3)
    b = generate(policy, prompts, max_new_tokens=8, temperature=1.0, top_p=0.95, seed=3)
    c = generate(policy, prompts, max_new_tokens=8, temperature=1.0, top_p=0.95, seed=4)
    assert a == b and a != c
    assert len({tuple(x) for x in a[:6]}) > 1  # a group's rows differ: one prefill, G samples
    assert all(0 < len(x) <= 8 for x in a)


def test_shared_prompt_logps_equal_full_forward_values_and_gradients(policy):
    """GRPO's forward with each distinct prompt run once = the plain forward, grads included."""
    from asrl.algo.logprobs import completion_logps, shared_prompt_logps
    from asrl.phases.rollouts import _pack

    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (6, 11)]
    rows = [prompts[0]] * 3 + [prompts[1]] * 3
    comps = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (4, 7, 1, 5, 7, 2)]
    b = _pack(rows, comps, policy.tokenizer.pad_token_id)
    params = policy.trainable_parameters()
    results = []
    for fn in (completion_logps, shared_prompt_logps):
        policy.model.zero_grad(set_to_none=True)
        lp = fn(policy.model, b.input_ids, b.attention_mask, b.completion_mask.size(1), 0.7)
        (lp * b.completion_mask).sum().backward()
        results.append((lp.detach() * b.completion_mask, [p.grad.clone() for p in params]))
    (lp_a, g_a), (lp_b, g_b) = results
    assert torch.allclose(lp_a, lp_b, atol=1e-5)
    worst = max(float((x - y).abs().max() / (x.abs().max() + 1e-12)) for x, y in zip(g_a, g_b))
    assert worst < 1e-4, worst


@pytest.mark.parametrize("sharpness", [0.3, 3.0, 12.0, 40.0])  # flat (fallback) .. one token
def test_the_first_search_draws_what_the_wide_search_draws(sharpness, monkeypatch):
    """Rows whose nucleus lies in the top 64 draw over the same 1024 candidates (zeros after
    the 64): sample for sample, the same tokens as a 1024-only search from the same seed."""
    import asrl.model.generation as gen_mod

    scores = torch.randn(96, 5000, generator=torch.Generator().manual_seed(4)) * sharpness
    fast = sample_top_p(scores, 0.95, torch.Generator().manual_seed(5))
    monkeypatch.setattr(gen_mod, "FIRST", gen_mod.WIDTH)
    wide = sample_top_p(scores, 0.95, torch.Generator().manual_seed(5))
    assert torch.equal(fast, wide)
