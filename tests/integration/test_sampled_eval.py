"""eval.temperature > 0: a sampled evaluation, samples_per_example outputs per example drawn
from a fixed random stream (the tiny random model, in-process)."""

from dataclasses import replace

import pytest

from asrl.config import ConfigError, load_config
from asrl.data.records import parse_record
from asrl.data.synthetic import generate_records
from asrl.model.loading import load_policy
from asrl.rewards.builtin import RewardSet
from asrl.train.evaluation import evaluate


@pytest.fixture(scope="module")
def setup():
    cfg = load_config("configs/tiny.yaml", ["model.autocast=none", "eval.max_new_tokens=8"])
    fmt = cfg.format.spec()
    policy = load_policy(cfg.model, seed=0)
    examples = [parse_record(r) for r in generate_records(3, seed=1, fmt=fmt, mix="paper")]
    return cfg, policy, examples, RewardSet.from_config(cfg.reward, fmt)


def _eval(setup, **sets):
    cfg, policy, examples, rewards = setup
    eval_cfg = replace(cfg.eval, max_examples=len(examples), **sets)
    m, samples = evaluate(policy, examples, cfg.format.spec(), rewards, eval_cfg, 256)
    m.pop("time/eval_s")
    return m, samples


def test_a_sampled_eval_scores_k_outputs_per_example_on_the_same_stream_every_time(setup):
    examples = setup[2]
    m, samples = _eval(setup, temperature=1.0, samples_per_example=3)
    assert [s["id"] for s in samples] == [ex.id for ex in examples for _ in range(3)]
    assert m["eval/n"] == 3  # examples, not outputs
    first = [s["output"] for s in samples[:3]]
    assert len(set(first)) > 1, first  # 3 draws, not one output copied
    again = _eval(setup, temperature=1.0, samples_per_example=3)
    assert again == (m, samples)  # a fixed seed: another adapter would meet the same draws
    greedy, greedy_samples = _eval(setup, samples_per_example=3)  # temperature 0: k unused
    assert [s["id"] for s in greedy_samples] == [ex.id for ex in examples]
    assert greedy["eval/val_loss"] == m["eval/val_loss"]  # the references, decoded or not


def test_each_sampled_output_is_scored_against_its_own_example():
    """A reward that answers with the number of the record it scored: every sample's score
    must name the sample's own example (a mix-up of outputs and examples would not)."""
    path = "tests.helpers.signal_rewards:record_number"
    cfg = load_config("configs/tiny.yaml", [f"reward.custom=[{{path: '{path}'}}]"])
    fmt = cfg.format.spec()
    policy = load_policy(cfg.model, seed=0)
    examples = [parse_record(r) for r in generate_records(3, seed=1, fmt=fmt, mix="paper")]
    rewards = RewardSet.from_config(cfg.reward, fmt)
    sampled = replace(cfg.eval, max_examples=3, max_new_tokens=4, temperature=1.0)
    _, samples = evaluate(
        policy, examples, fmt, rewards, replace(sampled, samples_per_example=2), 256
    )
    assert [s["id"] for s in samples] == [ex.id for ex in examples for _ in range(2)]
    for s in samples:
        assert s["rewards"]["record_number"] == float(s["id"].rsplit("-", 1)[1]), s


@pytest.mark.parametrize(
    "setting", ["eval.temperature=-0.1", "eval.top_p=0", "eval.samples_per_example=0"]
)
def test_bad_sampling_settings_name_the_key(setting):
    with pytest.raises(ConfigError, match=setting.split("=")[0].replace(".", r"\.")):
        load_config("configs/tiny.yaml", [setting])
