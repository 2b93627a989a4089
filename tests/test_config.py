"""Configuration errors name the key and the fix, before any heavy work."""

import pytest

from asrl.config import ConfigError, config_from_dict, load_config


def test_repo_configs_load():
    for name in ("demo", "tiny", "paper"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.model.lora.target_modules  # LoRA projections present
    paper = load_config("configs/paper.yaml")
    assert (paper.model.lora.r, paper.model.lora.alpha, paper.model.lora.dropout) == (32, 64, 0.0)
    assert (paper.grpo.num_generations, paper.grpo.questions_per_epoch) == (6, 8)
    assert (paper.reward.format_weight, paper.reward.correctness_weight) == (0.15, 0.85)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(
        ConfigError, match=r"grpo\.num_generation.*Did you mean 'grpo\.num_generations'"
    ):
        config_from_dict({"grpo": {"num_generation": 4}})


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"sft\.batch_size: expected int"):
        config_from_dict({"sft": {"batch_size": "eight"}})


def test_impossible_values():
    with pytest.raises(ConfigError, match=r"grpo\.num_generations: must be >= 2"):
        config_from_dict({"grpo": {"num_generations": 1}})
    with pytest.raises(ConfigError, match=r"grpo\.loss_type"):
        config_from_dict({"grpo": {"loss_type": "ppo"}})
    with pytest.raises(ConfigError, match=r"data\.split"):
        config_from_dict({"data": {"split": [0.5, 0.1, 0.1]}})
    with pytest.raises(ConfigError, match=r"schedule\.method"):
        config_from_dict({"schedule": {"method": "magic"}})


def test_overrides_are_parsed_as_yaml():
    cfg = config_from_dict({}, ["grpo.beta=0.04", "schedule.epochs=7", "model.name=foo/bar"])
    assert cfg.grpo.beta == 0.04 and cfg.schedule.epochs == 7 and cfg.model.name == "foo/bar"
    cfg = config_from_dict(
        {}, ["format.sections=[['[CODE]','[/CODE]'],['[EXPLANATION]','[/EXPLANATION]']]"]
    )
    assert cfg.format.spec().sections[0].open == "[CODE]"
    with pytest.raises(ConfigError, match="key=value"):
        config_from_dict({}, ["grpo.beta"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")
