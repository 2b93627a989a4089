"""The paper's reward, judged on the final answer; TRL's reward contract."""

import pytest

from asrl.config import RewardConfig, RewardFunctionConfig
from asrl.data.format import ThinkingFormat
from asrl.rewards.builtin import RewardSet, correctness_score, format_ok, normalize_answer
from asrl.types import Example

FMT = ThinkingFormat()
GOOD = (
    "<|thinking|>\n[LOGIC]17 + 25 = 42[/LOGIC]\n[INTUITION]About 40.[/INTUITION]\n<|/thinking|>\n42"
)


def ex(answer="42", response=GOOD, rtype="simple"):
    return Example("x", ({"role": "user", "content": "What is 17 + 25?"},), response, answer, rtype)


def test_correctness_levels():
    assert correctness_score("42", "42") == 1.0
    assert correctness_score("42.0", "42") == 1.0  # canonical numbers
    assert correctness_score("The answer is 42.", "42") == 0.5  # contained
    assert correctness_score("420", "42") == -0.5  # not a whole-token match
    assert correctness_score("4.2", "4") == -0.5
    assert correctness_score("41", "42") == -0.5
    assert normalize_answer(" **Yes**. ") == "yes"


def test_correctness_judges_final_answer_not_thinking():
    # the right number inside [LOGIC] but a wrong final answer must not count (paper would)
    text = "<|thinking|>\n[LOGIC]17 + 25 = 42[/LOGIC]\n[INTUITION]x[/INTUITION]\n<|/thinking|>\n41"
    rs = RewardSet.from_config(RewardConfig(), FMT)
    totals, comps = rs.score([ex()], [text])
    assert comps["correctness"] == [-0.5]
    assert comps["format"] == [1.0]
    assert totals[0] == pytest.approx(0.15 * 1.0 + 0.85 * -0.5)


def test_paper_weights_and_format():
    rs = RewardSet.from_config(RewardConfig(), FMT)
    totals, comps = rs.score([ex(), ex()], [GOOD, "42"])
    assert totals[0] == pytest.approx(0.15 + 0.85)
    assert comps["format"] == [1.0, -1.0]
    assert totals[1] == pytest.approx(-0.15 + 0.85)  # right answer, no format


def test_format_direct_records_reward_no_thinking():
    direct = ex(response="42", rtype="mixed")
    assert format_ok("42", direct.response, FMT)
    assert not format_ok(GOOD, direct.response, FMT)
    # unclosed or misordered tags fail the check
    assert not FMT.is_well_formed("[LOGIC]a[INTUITION]b[/INTUITION]")
    assert not FMT.is_well_formed("[/LOGIC][LOGIC][INTUITION]b[/INTUITION]")


def test_answer_defaults_to_reference_final_answer():
    rs = RewardSet.from_config(RewardConfig(format_weight=0, correctness_weight=1), FMT)
    totals, _ = rs.score([ex(answer=None)], ["42"])
    assert totals == [1.0]


def length_penalty(prompts, completions, **columns):
    """A custom reward following TRL's contract; None means no opinion."""
    return [None if c == "skip" else -len(c) / 100 for c in completions]


def test_custom_reward_by_import_path():
    cfg = RewardConfig(custom=[RewardFunctionConfig(path=f"{__name__}:length_penalty", weight=2.0)])
    rs = RewardSet.from_config(cfg, FMT)
    totals, comps = rs.score([ex(), ex()], ["42", "skip"])
    assert comps["length_penalty"] == [-0.02, None]
    assert totals[0] == pytest.approx(-0.15 + 0.85 + 2 * -0.02)
    assert totals[1] == pytest.approx(-0.15 - 0.85 * 0.5)  # None left out of the sum
