"""The vllm rollout engine for real, where vLLM is installed (an optional extra: CI's default
install has none, and this module is then skipped, saying so).

A tiny random Llama is saved to a directory for vLLM to start on; the test checks that the
engine's greedy completions equal the built-in slot engine's (fp32, the same weights), that a
weight sync carries an adapter change into vLLM, and that the ids come back cut as asrl's are.
vLLM's start-up (its compile warm-up) takes minutes on a CPU.
"""

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: pip install 'asrl[vllm]'")

from asrl.config import ModelConfig, RolloutConfig  # noqa: E402
from asrl.model.loading import load_policy  # noqa: E402
from asrl.rollout.slots import SlotEngine  # noqa: E402
from asrl.rollout.vllm_engine import VLLMEngine  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    policy = load_policy(ModelConfig(name="tiny-random-llama", autocast="none"), seed=0)
    base_dir = tmp_path_factory.mktemp("tiny")
    base = policy.model.get_base_model()
    with policy.model.disable_adapter():
        # the plain base weights, as a checkpoint vLLM can start from
        plain = type(base)(base.config)
        plain.load_state_dict(
            {
                k.replace(".base_layer", ""): v
                for k, v in base.state_dict().items()
                if "lora_" not in k
            }
        )
    plain.save_pretrained(base_dir)
    policy.tokenizer.save_pretrained(base_dir)
    engine = VLLMEngine(policy, RolloutConfig(engine="vllm"), model_name=str(base_dir))
    return policy, engine


def test_vllm_greedy_equals_the_slot_engine_and_follows_a_sync(setup):
    policy, engine = setup
    prompts = [[5, 6, 7, 8, 9], [40, 41, 42], [5, 6, 7, 8, 9]]
    slots = SlotEngine(policy)
    for scale in (0.0, 0.05):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in policy.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * scale)
        engine.sync()
        slots.sync()
        ours = slots.generate(prompts, 12, greedy=True)
        assert engine.generate(prompts, 12, greedy=True) == ours
        assert engine.sync_s > 0


def test_vllm_samples_are_seeded_and_cut_at_the_budget(setup):
    _, engine = setup
    prompts = [[5, 6, 7]] * 4
    a = engine.generate(prompts, 6, temperature=1.0, top_p=0.95, seed=3)
    assert a == engine.generate(prompts, 6, temperature=1.0, top_p=0.95, seed=3)
    assert all(0 < len(x) <= 6 for x in a)
