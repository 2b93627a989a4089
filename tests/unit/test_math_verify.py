"""reward.correctness: math_verify — equal values score 1 whatever their written form."""

import sys
import threading

import pytest

from asrl.config import ConfigError, load_config
from asrl.data.format import ThinkingFormat
from asrl.preflight import preflight
from asrl.rewards.builtin import RewardSet, correctness_score, math_verify_score
from asrl.types import Example


@pytest.mark.parametrize(
    ("answer", "truth"),
    [
        ("0.5", "1/2"),
        ("1/2", "0.5"),
        ("\\frac{1}{2}", "0.5"),
        ("$\\frac{1}{2}$", "1/2"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("1+2x", "2x+1"),
        ("2 x + 1", "2x+1"),
        ("\\sqrt{2}", "2^{1/2}"),
        ("1,000", "1000"),
        ("The answer is 42.", "42"),  # contained would give 0.5
        ("x = 2", "2"),
        ("42.0", "42"),
    ],
)
def test_equivalent_forms_score_one(answer, truth):
    assert math_verify_score(answer, truth) == 1.0


@pytest.mark.parametrize(
    ("answer", "truth"),
    [
        ("0.6", "1/2"),
        ("2", "2x+1"),  # math-verify alone reads only the 2 of a bare "2x+1"
        ("2x+1", "2"),
        ("2x-1", "2x+1"),
        ("-5", "5"),
        ("", "3"),
        ("\\frac{1}{3}", "0.5"),
    ],
)
def test_different_values_do_not_score_one(answer, truth):
    assert math_verify_score(answer, truth) < 1.0


@pytest.mark.parametrize(
    ("answer", "truth"),
    [
        ("yes", "yes"),
        ("Sara", "sara"),
        ("no", "yes"),
        ("Tom has more", "Tom"),
        ("420", "42"),
        ("banana", ""),
    ],
)
def test_non_math_answers_fall_back_to_the_contained_score(answer, truth):
    assert math_verify_score(answer, truth) == correctness_score(answer, truth)


def test_works_outside_the_main_thread():
    # math-verify's own timeout needs SIGALRM (main thread only); we switch it off elsewhere
    got = []
    t = threading.Thread(target=lambda: got.append(math_verify_score("0.25", "\\frac{1}{4}")))
    t.start()
    t.join()
    assert got == [1.0]


def test_reward_mode_from_config():
    fmt = ThinkingFormat()
    ex = Example(
        "a", ({"role": "user", "content": "half?"},), fmt.render(["1/2", "ok"], "1/2"), "1/2"
    )
    done = fmt.render(["half of one", "fine"], "0.5")
    for mode, want in (("contained", -0.5), ("math_verify", 1.0)):
        cfg = load_config("configs/tiny.yaml", [f"reward.correctness={mode}"])
        _, parts = RewardSet.from_config(cfg.reward, fmt).score([ex], [done])
        assert parts["correctness"] == [want], mode
    with pytest.raises(ConfigError, match="contained, math_verify"):
        load_config("configs/tiny.yaml", ["reward.correctness=sympy"])


def test_missing_package_is_a_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import now fails, as uninstalled
    with pytest.raises(ConfigError, match=r"pip install 'asrl\[math\]'"):
        preflight(load_config("configs/tiny.yaml", ["reward.correctness=math_verify"]))
