"""Configuration errors name the key and the fix, before any heavy work."""

import pytest

from asrl.config import ConfigError, config_from_dict, load_config
from asrl.preflight import preflight


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
        preflight(config_from_dict({"schedule": {"method": "magic"}}))


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


@pytest.mark.parametrize(("text", "value"), [("1e-5", 1e-5), ("5E-6", 5e-6), (".5", 0.5)])
def test_float_settings_accept_the_usual_spellings(tmp_path, text, value):
    # YAML 1.1 (PyYAML's default) reads 1e-5 and 5E-6 as strings
    path = tmp_path / "c.yaml"
    path.write_text(f"grpo:\n  lr: {text}\nsft: {{lr: {text}, weight_decay: {text}}}\n")
    cfg = load_config(path)  # a file
    assert (cfg.grpo.lr, cfg.sft.lr, cfg.sft.weight_decay) == (value, value, value)
    cfg = load_config("configs/tiny.yaml", [f"grpo.lr={text}", f"grpo.top_p={text}"])  # --set
    assert cfg.grpo.lr == value and cfg.grpo.top_p == value
    cfg = load_config(None, [f"reward.judge.timeout_s={text}", f"grpo.epsilon_high={text}"])
    assert cfg.reward.judge.timeout_s == value and cfg.grpo.epsilon_high == value  # float | None


def test_cli_takes_a_float_in_exponent_form(tmp_path):
    import subprocess
    import sys

    # the real command line: a bad later setting stops it at load time, after lr was read
    cmd = [sys.executable, "-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(tmp_path)]
    cmd += ["--set", "grpo.lr=1e-5", "--set", "sft.lr=5E-6", "--set", "grpo.num_generations=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "grpo.num_generations: must be >= 2" in r.stderr, r.stderr
    assert "lr" not in r.stderr
