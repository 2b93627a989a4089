"""The rollout engines against the reference loop: the slot engine (continuous batching over a
preallocated cache, in a decode copy of the model) decodes greedily token for token as the
reference does, through refills and a bounded cache; a seed reproduces a round; the weight
sync follows the policy; and the engine choice and the vLLM mapping behave as documented."""

import pytest
import torch

from asrl.config import ModelConfig, RolloutConfig
from asrl.errors import ConfigError
from asrl.model.generation import generate as reference_generate
from asrl.model.loading import load_policy
from asrl.rollout import attach, choose, generate, vllm_installed
from asrl.rollout.slots import SlotEngine, merged_weights
from asrl.rollout.vllm_engine import completion_ids, sampling_kwargs


def _policy(name):
    policy = load_policy(ModelConfig(name=name, autocast="none"), seed=0)
    g = torch.Generator().manual_seed(1)
    for n, p in policy.model.named_parameters():  # PEFT starts B at 0: a merge would be a no-op
        if "lora_B" in n:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
        if "q_proj.base_layer" in n or "k_proj.base_layer" in n:
            # peaked attention: a random tiny model attends almost uniformly, and would not
            # notice a row reading another row's keys
            p.data.mul_(6.0)
    return policy


@pytest.fixture(scope="module", params=["tiny-random-llama", "tiny-random-qwen3"])
def policy(request):
    return _policy(request.param)


def _prompts(n_distinct=4, repeats=(3, 1, 2, 1), seed=2):
    g = torch.Generator().manual_seed(seed)
    distinct = [torch.randint(3, 2000, (n,), generator=g).tolist() for n in (5, 9, 13, 31)]
    out = []
    for p, r in zip(distinct[:n_distinct], repeats):
        out += [p] * r
    return out + [distinct[0]]  # a prompt again, not next to its first rows


@pytest.mark.parametrize("batch_size", [None, 2, 3])
def test_greedy_equals_the_reference_loop_token_for_token(policy, batch_size):
    """batch_size 2 / 3: fewer slots than rows, so finished rows hand their slot to waiting
    ones (a refill, a compaction, a prefill into a used slot) many times over."""
    prompts = _prompts()
    ref = reference_generate(policy, prompts, max_new_tokens=24, greedy=True)
    engine = SlotEngine(policy)
    engine.sync()
    assert engine.generate(prompts, 24, greedy=True, batch_size=batch_size) == ref
    assert len({len(r) for r in ref}) >= 1 and all(0 < len(r) <= 24 for r in ref)


def test_rows_that_end_early_hand_their_slot_on(policy):
    """A random model never says end-of-turn, so every row runs to the budget; here an
    end-of-turn token is one greedy decoding reaches at different steps in different rows,
    so rows end apart and later rows move into the finished rows' slots."""
    tok = policy.tokenizer
    old = tok.eos_token
    prompts = _prompts() * 2
    free = reference_generate(policy, prompts, max_new_tokens=24, greedy=True)
    tokens = {t for row in free for t in row}

    def ends(t):  # the step each row would end at with t as end-of-turn (None: never)
        return {row.index(t) if t in row else None for row in free}

    eos = max(sorted(tokens), key=lambda t: len(ends(t)))
    assert len(ends(eos)) >= 2
    tok.eos_token = tok.convert_ids_to_tokens(eos)
    try:
        ref = reference_generate(policy, prompts, max_new_tokens=24, greedy=True)
        engine = SlotEngine(policy)
        engine.sync()
        for batch_size in (3, 5, None):
            assert engine.generate(prompts, 24, greedy=True, batch_size=batch_size) == ref
    finally:
        tok.eos_token = old
    assert len({len(r) for r in ref}) >= 2  # rows did end apart


def test_a_bounded_cache_gives_the_same_completions(policy):
    prompts = _prompts()
    engine = SlotEngine(policy)
    engine.sync()
    free = engine.generate(prompts, 16, greedy=True)
    width = max(map(len, prompts)) + 16
    tight = SlotEngine(policy, max_batch_tokens=2 * width)  # two rows at a time
    tight.sync()
    assert tight.generate(prompts, 16, greedy=True) == free


def test_prefill_logits_equal_the_models_forward(policy):
    prompts = _prompts()[:4]
    engine = SlotEngine(policy)
    engine.sync()
    st = engine._slots(len(prompts), 40)
    logits = torch.empty(len(prompts), engine.config.vocab_size)
    with torch.inference_mode():
        engine._prefill(st, prompts, logits)
        for i, p in enumerate(prompts):
            ref = policy.model(input_ids=torch.tensor([p])).logits[0, -1]
            assert torch.allclose(logits[i], ref, atol=1e-4), i
    assert st.lens[: len(prompts)].tolist() == [len(p) for p in prompts]


def test_a_seed_reproduces_a_round_and_rows_of_a_group_differ(policy):
    engine = SlotEngine(policy)
    engine.sync()
    prompts = [[5, 6, 7, 8]] * 6 + [[9, 10, 11]] * 6
    a = engine.generate(prompts, 8, temperature=1.0, top_p=0.95, seed=3)
    b = engine.generate(prompts, 8, temperature=1.0, top_p=0.95, seed=3)
    c = engine.generate(prompts, 8, temperature=1.0, top_p=0.95, seed=4)
    assert a == b and a != c
    assert len({tuple(x) for x in a[:6]}) > 1
    assert all(0 < len(x) <= 8 for x in a)


def test_the_sync_follows_the_policy_and_leaves_it_as_it_was():
    policy = _policy("tiny-random-llama")
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    prompts = _prompts()
    engine = SlotEngine(policy)
    engine.sync()
    old = engine.generate(prompts, 12, greedy=True)
    with torch.no_grad():  # a training step, as far as decoding can tell
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.mul_(-3.0)
    ref = reference_generate(policy, prompts, max_new_tokens=12, greedy=True)
    assert ref != old  # the change is visible to greedy decoding
    engine.sync()
    assert engine.generate(prompts, 12, greedy=True) == ref
    for n, p in policy.model.named_parameters():  # merge + unmerge left the weights exact
        if "lora_B" not in n:
            assert torch.allclose(p, before[n], atol=1e-6), n


def test_merged_weights_are_named_as_the_plain_model():
    policy = _policy("tiny-random-qwen3")
    with policy.merged():
        names = dict(merged_weights(policy))
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert not any("lora_" in n or "base_layer" in n for n in names)
    plain = type(policy.model.get_base_model())(policy.model.get_base_model().config)
    assert set(names) == set(plain.state_dict())


def test_generate_uses_the_attached_engine_and_auto_picks_asrl_here():
    policy = _policy("tiny-random-llama")
    assert choose(policy, RolloutConfig())[0] == "asrl"
    assert "rollout engine: hf" in attach(policy, RolloutConfig(engine="hf"))
    prompts = _prompts()
    ref = generate(policy, prompts, 10, greedy=True)
    assert attach(policy, RolloutConfig()).startswith("rollout engine: asrl")
    assert generate(policy, prompts, 10, greedy=True) == ref
    assert policy.engine.sync_s > 0


def test_an_engine_that_cannot_run_fails_with_what_to_do():
    policy = _policy("tiny-random-llama")
    if not vllm_installed():
        with pytest.raises(ConfigError, match=r"pip install 'asrl\[vllm\]'"):
            choose(policy, RolloutConfig(engine="vllm"))
    policy.sharded = True  # what an FSDP launch sets: every process decodes in lockstep
    assert choose(policy, RolloutConfig())[0] == "hf"
    with pytest.raises(ConfigError, match="sharded"):
        choose(policy, RolloutConfig(engine="asrl"))


def test_vllm_sampling_parameters_map_one_to_one():
    kw = sampling_kwargs(96, 0.7, 0.95, greedy=False, seed=5, eos_token_id=2)
    assert kw["temperature"] == 0.7 and kw["top_p"] == 0.95 and kw["max_tokens"] == 96
    assert kw["stop_token_ids"] == [2] and kw["n"] == 1 and kw["seed"] == 5
    assert kw["top_k"] == 0 and kw["min_p"] == 0.0 and kw["repetition_penalty"] == 1.0
    greedy = sampling_kwargs(96, 0.7, 0.95, greedy=True, seed=5, eos_token_id=2)
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0


def test_vllm_completions_are_cut_as_the_built_in_engines_cut_them():
    assert completion_ids([7, 8, 2, 9], eos_token_id=2, max_new_tokens=10) == [7, 8, 2]
    assert completion_ids([7, 8, 9], eos_token_id=2, max_new_tokens=2) == [7, 8]
    assert completion_ids([], eos_token_id=2, max_new_tokens=4) == []
