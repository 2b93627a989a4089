"""Fresh GRPO questions: records no SFT phase trained on come first (``grpo.fresh_questions``),
and ``grpo.question_source`` draws new procedural questions, none the dataset holds.
Pure pieces on hand-made records; end to end on the tiny model, real runs, real files."""

import importlib.util
import json
import random

import pytest

from asrl.config import ConfigError, GRPOConfig, load_config
from asrl.data.format import ThinkingFormat
from asrl.phases.questions import phase_seed, procedural_questions, questions_needed
from asrl.phases.selection import PassRates, SFTHistory, choose_questions, least_recently_trained
from asrl.preflight import preflight
from asrl.train.loop import train
from asrl.types import Example

FMT = ThinkingFormat()
GYM = load_config("configs/tiny.yaml").data.reasoning_gym


def examples(n: int) -> list[Example]:
    return [
        Example(id=f"ex-{i}", messages=({"role": "user", "content": f"Say {i}."},), response="ok")
        for i in range(n)
    ]


def test_never_sft_trained_first_then_least_recently():
    train = examples(12)
    history = SFTHistory()
    history.mark([f"ex-{i}" for i in range(0, 4)], 1)  # 0..3 last trained at epoch 1
    history.mark([f"ex-{i}" for i in range(4, 9)], 2)  # 4..8 at epoch 2; 9..11 never
    for selection in ("uniform", "pass_rate"):
        cfg = GRPOConfig(question_selection=selection)
        for seed in range(20):
            got = choose_questions(train, 6, random.Random(seed), cfg, PassRates(), (), history)
            assert len(set(got)) == 6
            assert sorted(got[:3]) == [9, 10, 11]  # all the never-trained ones
            assert set(got[3:]) < {0, 1, 2, 3}  # then 3 of the 4 trained longest ago
        # excluded ones are skipped, and the next tier fills in
        got = choose_questions(train, 6, random.Random(0), cfg, PassRates(), {9, 10}, history)
        assert got[0] == 11 and set(got[1:5]) == {0, 1, 2, 3} and got[5] in range(4, 9)


def test_one_tier_or_fresh_off_is_the_plain_draw():
    train = examples(20)
    cfg, off = GRPOConfig(), GRPOConfig(fresh_questions=False)
    history = SFTHistory()
    history.mark([e.id for e in train], 3)  # an SFT phase over the whole split
    plain = choose_questions(train, 5, random.Random(4), cfg, PassRates())
    assert plain == [train.index(e) for e in random.Random(4).sample(train, 5)]
    assert choose_questions(train, 5, random.Random(4), cfg, PassRates(), (), history) == plain
    history.mark(["ex-0"], 4)
    assert choose_questions(train, 5, random.Random(4), off, PassRates(), (), history) == plain


def test_sft_takes_the_untrained_first_then_the_least_recent():
    h = SFTHistory()
    ids = [f"r{i}" for i in range(10)]
    assert least_recently_trained(ids, 4, random.Random(2), h) == random.Random(2).sample(
        range(10), 4
    )  # one tier: the plain sample
    h.mark(ids[:6], 1)
    h.mark(ids[:2], 2)
    got = least_recently_trained(ids, 7, random.Random(0), h)
    assert sorted(got[:4]) == [6, 7, 8, 9] and set(got[4:]) < {2, 3, 4, 5}  # then epoch 1


def test_sft_history_state_round_trip():
    h = SFTHistory()
    h.mark(["a", "b"], 1)
    h.mark(["b"], 3)
    back = SFTHistory()
    back.restore(json.loads(json.dumps(h.state())))
    assert back == h and back.get("b") == 3 and back.get("a") == 1 and back.get("c") is None


def test_generator_questions_are_new_distinct_and_seeded():
    a = procedural_questions("generator", 12, 5, FMT, "paper", GYM, [[]])
    assert len(a) == 12 and len({e.prompt_text for e in a}) == 12
    assert [e.id for e in a] == [
        e.id for e in procedural_questions("generator", 12, 5, FMT, "paper", GYM, [[]])
    ]
    other = procedural_questions("generator", 12, 6, FMT, "paper", GYM, [])
    assert {e.id for e in other}.isdisjoint(e.id for e in a)
    # a question the dataset holds (same text, any id) is never drawn
    known = [Example(id="mine", messages=e.messages, response="x") for e in a[:4]]
    b = procedural_questions("generator", 12, 5, FMT, "paper", GYM, [known[:2], known[2:]])
    assert len(b) == 12
    assert not {e.prompt_text for e in b} & {e.prompt_text for e in known}
    assert phase_seed(1) != phase_seed(2) and phase_seed(1) == phase_seed(1)
    assert questions_needed(GRPOConfig(questions_per_epoch=4, rounds_per_phase=2)) == 8
    cfg = GRPOConfig(questions_per_epoch=4, filter_zero_std=True, max_resample_rounds=2)
    assert questions_needed(cfg) == 12


@pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None, reason="no reasoning-gym")
def test_reasoning_gym_questions():
    a = procedural_questions("reasoning_gym:basic_arithmetic", 5, 9, FMT, "paper", GYM, [])
    assert len(a) == 5 and all(e.id.startswith("rg-basic_arithmetic-") for e in a)
    assert all(e.answer for e in a) and len({e.prompt_text for e in a}) == 5
    with pytest.raises(ConfigError, match=r"grpo\.question_source: 'nosuch'"):
        preflight(load_config("configs/tiny.yaml", ["grpo.question_source=reasoning_gym:nosuch"]))


def test_bad_source_names_the_key():
    with pytest.raises(ConfigError, match=r"grpo\.question_source"):
        load_config("configs/tiny.yaml", ["grpo.question_source=elsewhere"])


def _run(tmp_path, *sets):
    cfg = load_config(
        "configs/tiny.yaml",
        [
            f"output_dir={tmp_path / 'out'}",
            f"data.path={tmp_path / 'data.jsonl'}",
            "data.generate.count=30",
            "eval.max_examples=2",
            "model.threads=1",
            "grpo.questions_per_epoch=4",
            "grpo.samples_to_log=100",
            *sets,
        ],
    )
    train(cfg)
    out = tmp_path / "out"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    samples = [s for s in samples if s["phase"] == "grpo"]  # the rollouts (not eval outputs)
    data = [json.loads(x) for x in (tmp_path / "data.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("phase") == "grpo"], samples, data


def test_a_run_draws_the_questions_sft_has_not_trained_on_first(tmp_path):
    grpo, samples, _ = _run(tmp_path, "sft.max_examples_per_phase=8")
    # ~24 train records, 8 SFT-trained per epoch: 4 questions are all untrained ones at epoch 1
    assert grpo[0]["train/questions_sft_trained"] == 0
    state = json.loads((tmp_path / "out" / "checkpoints" / "epoch-0002" / "state.json").read_text())
    trained = state["sft_history"]["last"]
    # sft.unseen_first: epoch 2's SFT phase took 8 records epoch 1's had not
    assert sorted(trained.values()) == [1] * 8 + [2] * 8
    epoch1 = {s["id"] for s in samples if s.get("epoch") == 1}
    assert epoch1 and not epoch1 & {k for k, v in trained.items() if v == 1}


def test_a_run_on_generator_questions_never_samples_the_datasets(tmp_path):
    grpo, samples, data = _run(tmp_path, "grpo.question_source=generator")
    held = {r["id"] for r in data} | {r["prompt"] for r in data if "prompt" in r}
    assert samples and all(s["id"].startswith("syn-paper-") for s in samples)
    assert not {s["id"] for s in samples} & held
    texts = {m["content"] for r in data for m in r.get("messages", []) if m["role"] == "user"}
    texts |= {r["prompt"] for r in data if "prompt" in r}
    assert not {s["prompt"] for s in samples} & texts
    by_epoch = {}
    for s in samples:
        by_epoch.setdefault(s.get("epoch"), set()).add(s["id"])
    assert len(by_epoch) == 2 and set.isdisjoint(*by_epoch.values())  # new ones each phase
    assert all(r["train/questions_sft_trained"] == 0 for r in grpo)
