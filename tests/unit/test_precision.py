"""Precision: what ``model.autocast: auto`` picks, and float64 runs staying float64."""

import pytest
import torch

from asrl.algo.logprobs import token_logps
from asrl.config import ConfigError, ModelConfig, load_config
from asrl.model.loading import (
    CPU_BF16_MIN_SPEEDUP,
    _cpu_bf16_speedup,
    cpu_autocast_for,
    load_policy,
    pick_autocast,
)
from asrl.model.numerics import upcast


def test_explicit_autocast_settings_are_taken_as_given():
    cpu = torch.device("cpu")
    assert pick_autocast("none", cpu) is None
    assert pick_autocast("bf16", cpu) is torch.bfloat16
    assert pick_autocast("fp16", cpu) is torch.float16


def test_auto_on_a_cpu_picks_bf16_only_where_it_clearly_pays():
    assert cpu_autocast_for(2.0) is torch.bfloat16  # a Xeon with AMX
    assert cpu_autocast_for(0.55) is None  # AVX512-BF16 without AMX: bf16 1.8x slower
    assert cpu_autocast_for(1.0) is None  # equal: fp32's exactness wins
    assert cpu_autocast_for(CPU_BF16_MIN_SPEEDUP) is None
    assert cpu_autocast_for(CPU_BF16_MIN_SPEEDUP + 0.01) is torch.bfloat16


def test_the_cpu_speedup_is_measured_and_auto_follows_it():
    speedup = _cpu_bf16_speedup(rounds=2)
    assert 0.01 < speedup < 100  # a ratio of two real timings
    assert pick_autocast("auto", torch.device("cpu")) in (None, torch.bfloat16)


def test_the_test_config_pins_fp32():
    """Tests compare numbers at fp32 tolerances: configs/tiny.yaml must not say auto."""
    assert load_config("configs/tiny.yaml").model.autocast == "none"


def test_float64_master_weights_stay_float64_through_the_maths():
    policy = load_policy(ModelConfig(name="tiny-random-llama", autocast="none", dtype="float64"))
    assert {p.dtype for p in policy.model.parameters()} == {torch.float64}
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    logits = policy.model(input_ids=ids).logits
    assert logits.dtype == torch.float64
    assert token_logps(logits[:, :-1], ids[:, 1:]).dtype == torch.float64
    assert upcast(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32


def test_float64_with_autocast_is_refused():
    with pytest.raises(ConfigError, match="model.dtype"):
        load_config("configs/tiny.yaml", ["model.dtype=float64", "model.autocast=bf16"])
    with pytest.raises(ConfigError, match="model.dtype"):
        load_config("configs/tiny.yaml", ["model.dtype=float16"])
