"""CHORD: the mu schedule, the phi weight, and the blend's gradients at mu = 1 and mu = 0."""

import math
import random

import pytest
import torch

from asrl.config import GRPOConfig, ScheduleConfig, SFTConfig, load_config
from asrl.data.records import parse_record
from asrl.data.render import tokenize_all
from asrl.data.synthetic import generate_records
from asrl.methods.chord import chord_mu, chord_phi, run_chord_phase
from asrl.phases.grpo import run_grpo_phase
from asrl.phases.sft import run_sft_phase
from asrl.rewards.builtin import RewardSet, WeightedReward


def test_chord_mu_hand_computed():
    # W = 4, D = 10, peak 0.8, valley 0.2
    mu = [chord_mu(s, 0.8, 0.2, 4, 10) for s in (0, 2, 4, 9, 14, 100)]
    # warm-up: 0.8 * 0/4 = 0, 0.8 * 2/4 = 0.4; step 4: peak 0.8;
    # step 9: t = 5/10, 0.2 + 0.6 * (1 + cos(pi/2)) / 2 = 0.5; step 14 and after: 0.2
    assert mu == pytest.approx([0.0, 0.4, 0.8, 0.5, 0.2, 0.2])
    # step 6: t = 0.2, 0.2 + 0.6 * (1 + cos(0.2 pi)) / 2 = 0.2 + 0.3 * 1.809017 = 0.742705
    assert chord_mu(6, 0.8, 0.2, 4, 10) == pytest.approx(0.742705, abs=1e-6)
    assert chord_mu(0, 0.5, 0.1, 0, 0) == 0.1  # no warm-up, no decay: straight to the valley
    assert chord_mu(3, 1.0, 1.0, 0, 5) == 1.0


def test_chord_phi_is_p_one_minus_p_and_detached():
    logp = torch.log(torch.tensor([0.5, 0.9, 0.1, 1.0])).requires_grad_()
    phi = chord_phi(logp)
    assert phi.tolist() == pytest.approx([0.25, 0.09, 0.09, 0.0])
    assert not phi.requires_grad


class Capture:
    """An optimizer stand-in that records the gradients it is asked to apply."""

    def __init__(self, params):
        self.params, self.param_groups, self.grads = params, [{"lr": 0.0}], None

    def step(self):
        self.grads = [p.grad.detach().clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def _varied(prompts, completions, **_):
    return [float(sum(map(ord, c)) % 7) for c in completions]  # rewards that differ


@pytest.fixture(scope="module")
def setup():
    from asrl.model.loading import load_policy

    policy = load_policy(load_config("configs/tiny.yaml").model, seed=1)
    for name, p in policy.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # non-zero B: every LoRA matrix gets a gradient
    train = [parse_record(r) for r in generate_records(4, seed=3)]
    gcfg = GRPOConfig(
        questions_per_epoch=2,
        num_generations=3,
        max_new_tokens=8,
        steps_per_round=1,
        micro_batch_size=8,
        max_grad_norm=0.0,  # no clipping: compare raw gradients
    )
    rewards = RewardSet([WeightedReward("varied", _varied, 1.0)])
    return policy, train, gcfg, rewards


def _chord_grads(setup, mu):
    policy, train, gcfg, rewards = setup
    sched = ScheduleConfig(
        method="chord", chord_mu_peak=mu, chord_mu_valley=mu, chord_sft_batch_size=len(train)
    )
    cap = Capture(policy.trainable_parameters())
    res = run_chord_phase(
        policy, train, gcfg, sched, rewards, cap, random.Random(0), 0, step0=0, max_length=256
    )
    assert res.phase == "chord" and res.metrics["train/chord_mu"] == mu
    return cap.grads


def _close(a, b):
    assert len(a) == len(b) and any(g.abs().sum() > 0 for g in a)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-7)


def test_chord_mu_one_is_the_sft_gradient(setup):
    policy, train, _, _ = setup
    blended = _chord_grads(setup, 1.0)
    data, _ = tokenize_all(policy.tokenizer, train, 256)
    cap = Capture(policy.trainable_parameters())
    run_sft_phase(
        policy, data, SFTConfig(batch_size=len(train), max_grad_norm=0.0), cap, random.Random(0)
    )
    _close(blended, cap.grads)


def test_chord_mu_zero_is_the_grpo_gradient(setup):
    policy, train, gcfg, rewards = setup
    blended = _chord_grads(setup, 0.0)
    cap = Capture(policy.trainable_parameters())
    res = run_grpo_phase(policy, train, gcfg, rewards, cap, random.Random(0), 0)
    assert res.metrics["train/reward_std"] > 0 and not math.isnan(res.metrics["train/grpo_loss"])
    _close(blended, cap.grads)
