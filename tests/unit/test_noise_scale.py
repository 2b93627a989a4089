"""The gradient noise scale's estimators (benchmarks/grpo_noise_scale.py) on vectors whose
mean and covariance are known."""

import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from grpo_noise_scale import (  # noqa: E402
    alignment,
    gram_of,
    half_cosine,
    jackknife_interval,
    mean_of,
    noise_stats,
)


def units(n: int, dim: int, mean_sq: float, trace: float, seed: int = 0) -> list[torch.Tensor]:
    """n vectors g_i = mu + noise, |mu|^2 = mean_sq, tr(Sigma) = trace (isotropic)."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=gen, dtype=torch.float64)
    mu *= (mean_sq / mu.pow(2).sum()).sqrt()
    sigma = (trace / dim) ** 0.5
    return [
        (mu + sigma * torch.randn(dim, generator=gen, dtype=torch.float64)).float()
        for _ in range(n)
    ]


@pytest.mark.parametrize("b_true", [5.0, 50.0])
def test_noise_stats_recovers_trace_signal_and_b_simple(b_true):
    # n well above B: the |G|^2 estimate is a difference of two numbers that do not cancel
    vs = units(n=800, dim=2000, mean_sq=1.0, trace=b_true)
    st = noise_stats(gram_of(vs))
    assert st["trace_sigma"] == pytest.approx(b_true, rel=0.03)
    assert st["g2"] == pytest.approx(1.0, rel=0.15)
    assert st["b_simple"] == pytest.approx(b_true, rel=0.15)
    # the naive |mean|^2 (no bias correction) overstates the signal by tr(Sigma) / n
    naive = float(gram_of(vs).sum()) / len(vs) ** 2
    assert naive == pytest.approx(1.0 + b_true / 800, rel=0.1)


def test_zero_units_dilute_the_signal_but_add_no_noise_of_their_own():
    """Zero-variance GRPO groups have zero gradient (None): as units they scale the mean by
    the live share k, so |G|^2 by k^2 and B_simple up by about 1/k."""
    live = units(n=400, dim=1000, mean_sq=1.0, trace=10.0, seed=1)
    mixed = live + [None] * 400  # half the units are zero
    alone, diluted = noise_stats(gram_of(live)), noise_stats(gram_of(mixed))
    assert diluted["g2"] == pytest.approx(alone["g2"] / 4, rel=0.1)
    assert diluted["b_simple"] > 1.7 * alone["b_simple"]


def test_half_cosine_is_one_without_noise_and_near_zero_when_noise_dominates():
    rng = random.Random(0)
    clean = units(n=20, dim=500, mean_sq=1.0, trace=1e-8)
    assert half_cosine(gram_of(clean), rng) == pytest.approx(1.0, abs=1e-6)
    noisy = units(n=20, dim=5000, mean_sq=1.0, trace=1e5)
    assert abs(half_cosine(gram_of(noisy), rng)) < 0.1


def test_jackknife_interval_holds_the_true_b_and_narrows_with_more_units():
    wide = jackknife_interval(gram_of(units(n=100, dim=2000, mean_sq=1.0, trace=50.0, seed=2)))
    narrow = jackknife_interval(gram_of(units(n=800, dim=2000, mean_sq=1.0, trace=50.0, seed=3)))
    for lo, hi in (wide, narrow):
        assert lo < 50.0 < hi
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 2


def test_alignment_of_two_samples_is_the_cosine_of_their_expected_gradients():
    """Two independent noisy samples: the same mean gives ~1, orthogonal means ~0, even where
    the noise swamps each sample's own mean (the naive cosine of the means is well below 1)."""
    dim = 3000
    base = torch.randn(dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    other = torch.randn(dim, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    other -= (other @ base) / (base @ base) * base  # orthogonal to base
    base, other = base / base.norm(), other / other.norm()

    def sample(mean, seed):
        noise = units(n=200, dim=dim, mean_sq=1e-12, trace=400.0, seed=seed)
        vs = [(mean + v.double()).float() for v in noise]
        return {"all": gram_of(vs), "mean": mean_of(vs)}

    a, b, c = sample(base, 10), sample(base, 11), sample(other, 12)
    assert alignment(a, b)["cosine"] == pytest.approx(1.0, abs=0.3)
    assert abs(alignment(a, c)["cosine"]) < 0.3
    naive = float(a["mean"] @ b["mean"]) / float(a["mean"].norm() * b["mean"].norm())
    assert naive < 0.5  # what the correction is for: noise shrinks the raw cosine
