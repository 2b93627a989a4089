"""reasoning-gym as a live generator: deterministic, growing per poll, resumable by cursor,
rendered in our thinking format, and scored by the task's own scorer (the real package)."""

import itertools
import json
import sys

import pytest

from asrl.config import ConfigError, load_config
from asrl.data.format import ThinkingFormat
from asrl.data.gym import ReasoningGymSource, score_entry, task_dataset
from asrl.data.live import LiveDataset
from asrl.data.records import parse_record
from asrl.data.sources import open_source
from asrl.preflight import preflight
from asrl.rewards.builtin import RewardSet, format_ok, reasoning_gym_correctness

SMALL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def source(**kw):
    kw = {"initial": 6, "per_poll": 4, "options": SMALL, **kw}
    return ReasoningGymSource("basic_arithmetic", **kw)


def polled(src):
    return [r.data for r in src.poll()]


def test_deterministic_by_seed_and_growing_per_poll():
    a, b, c = source(seed=3), source(seed=3), source(seed=4)
    first = polled(a)
    assert len(first) == 6 and a.state() == {"index": 6}
    assert [r["prompt"] for r in first] == [r["prompt"] for r in polled(b)]
    assert [r["prompt"] for r in first] != [r["prompt"] for r in polled(c)]
    assert len(polled(a)) == 4 and len(polled(a)) == 4 and a.state() == {"index": 14}
    capped = source(size=8)
    assert len(polled(capped)) == 6 and len(polled(capped)) == 2 and polled(capped) == []


def test_config_builds_the_source_and_checks_it():
    cfg = load_config(
        "configs/tiny.yaml",
        [
            "data.path=reasoning_gym:basic_arithmetic",
            "data.reasoning_gym.initial=5",
            "data.reasoning_gym.per_poll=2",
            "data.reasoning_gym.seed=7",
            "data.reasoning_gym.options={min_terms: 2, max_terms: 2}",
        ],
    )
    src = open_source(cfg.data.path, cfg.data, cfg.format.spec())
    assert isinstance(src, ReasoningGymSource)
    assert (src.seed, src.initial, src.per_poll, src.options) == (
        7,
        5,
        2,
        {"min_terms": 2, "max_terms": 2},
    )
    with pytest.raises(ConfigError, match="Did you mean basic_arithmetic"):
        preflight(load_config("configs/tiny.yaml", ["data.path=reasoning_gym:basic_arithmetc"]))
    with pytest.raises(ConfigError, match="rejects"):
        preflight(
            load_config(
                "configs/tiny.yaml",
                [
                    "data.path=reasoning_gym:basic_arithmetic",
                    "data.reasoning_gym.options={bogus: 1}",
                ],
            )
        )
    with pytest.raises(ConfigError, match="data.reasoning_gym.seed"):
        preflight(
            load_config(
                "configs/tiny.yaml",
                [
                    "data.path=reasoning_gym:basic_arithmetic",
                    "data.reasoning_gym.options={seed: 1}",
                ],
            )
        )
    with pytest.raises(ConfigError, match="options: expected a mapping"):
        load_config("configs/tiny.yaml", ["data.reasoning_gym.options=[1]"])


@pytest.mark.parametrize(
    "fmt",
    [
        ThinkingFormat(),
        ThinkingFormat.from_pairs(
            [["[CODE]", "[/CODE]"], ["[WHY]", "[/WHY]"], ["[CHECK]", "[/CHECK]"]]
        ),
        ThinkingFormat.from_pairs([["[PLAN]", "[/PLAN]"]], "<think>", "</think>"),
    ],
)
@pytest.mark.parametrize("task", ["basic_arithmetic", "gsm_symbolic", "spell_backward"])
def test_rendered_records_parse_and_pass_the_format_reward(fmt, task):
    src = ReasoningGymSource(task, initial=5, fmt=fmt)
    for raw in src.poll():
        ex = raw.parse()
        assert ex == parse_record(raw.data) and ex.type == task
        assert fmt.is_well_formed(ex.response) and format_ok(ex.response, ex.response, fmt)
        assert fmt.final_answer(ex.response) == ex.answer  # the reference ends in the answer
        col = ex.extra["reasoning_gym"]
        assert json.loads(json.dumps(col)) == col  # plain JSON: checkpoints can store it
        entry = task_dataset(task, col["seed"], col["size"], col["options"])[col["index"]]
        assert ex.prompt_text == entry["question"]
        assert score_entry(ex.answer, col) == 1.0


def test_correctness_reward_is_the_task_scorer():
    fmt = ThinkingFormat()
    cfg = load_config("configs/tiny.yaml", ["data.path=reasoning_gym:basic_arithmetic"])
    rewards = RewardSet.from_config(cfg.reward, fmt)
    ds = LiveDataset([source()])
    ds.refresh()
    ex = ds.train[0]
    right = ex.response  # the reference: thinking block, then the task's answer
    wrong = fmt.render(["guess", "hmm"], str(int(ex.answer) + 1000))
    prose = fmt.render([f"it is {ex.answer}", "sure"], "no idea")  # the answer only inside
    _, parts = rewards.score([ex] * 3, [right, wrong, prose])
    assert parts["correctness"] == [1.0, 0.0, 0.0]
    assert parts["format"] == [1.0, 1.0, 1.0]
    cols = RewardSet.columns([ex] * 3)
    assert reasoning_gym_correctness(["p"] * 3, [right, wrong, prose], **cols) == [1.0, 0.0, 0.0]
    # a column may carry the item itself (records written elsewhere): it is scored on that
    col = ex.extra["reasoning_gym"]
    entry = dict(task_dataset("basic_arithmetic", 0, col["size"], SMALL)[col["index"]])
    assert score_entry(ex.answer, {**col, "entry": entry}) == 1.0
    assert score_entry(ex.answer, {**col, "entry": {**entry, "answer": "-1234"}}) == 0.0
    # records without the column get no opinion from the standalone function
    assert reasoning_gym_correctness(["p"], ["x"], answer=["1"]) == [None]


def take(src, k):
    """The first k records a run absorbs, across as many polls as that takes."""
    out = []
    while len(out) < k:
        out += [r.data["id"] for r in itertools.islice(src.poll(), k - len(out))]
    return out


def test_resume_by_cursor_reproduces_and_continues_without_duplicates():
    straight = source()
    everything = [r["id"] for r in polled(straight) + polled(straight) + polled(straight)]
    assert len(set(everything)) == len(everything) == 14
    for k in (0, 3, 6, 9):
        run = source()
        taken = take(run, k)
        state = json.loads(json.dumps(run.state()))  # as a checkpoint stores it
        assert state == {"index": k} and taken == everything[:k]
        replay = source()
        replay.restore_until(state)
        assert [r["id"] for r in polled(replay)] == taken  # the dataset is rebuilt exactly
        grow = 6 if k == 0 else 4  # then it grows as the run would have: initial, per_poll
        assert [r["id"] for r in polled(replay)] == everything[k : k + grow]
        resumed = source()
        resumed.restore(state)
        assert [r["id"] for r in polled(resumed)] == everything[k : k + grow]


def test_generator_failures_and_repeats_are_handled(tmp_path, monkeypatch):
    src = source(initial=8)
    ds_rg = task_dataset("basic_arithmetic", 0, src.size, SMALL)
    real = type(ds_rg).__getitem__

    def flaky(self, i):
        if i == 2:
            raise RuntimeError("generator bug")
        return real(self, 1 if i == 5 else i)  # item 5 repeats item 1's question

    monkeypatch.setattr(type(ds_rg), "__getitem__", flaky)
    q = tmp_path / "q.jsonl"
    ds = LiveDataset([src], quarantine=q)
    res = ds.refresh()
    assert (res.new, res.rejected, res.duplicates) == (6, 1, 1)
    (bad,) = [json.loads(x) for x in q.read_text().splitlines()]
    assert bad["where"] == "reasoning_gym:basic_arithmetic:2"
    assert "failed on item 2: RuntimeError: generator bug" in bad["reason"]
    assert src.state() == {"index": 8}  # a failed item is skipped, not retried forever


def test_tiny_training_run_grows_from_a_reasoning_gym_source_and_resumes(tmp_path):
    from asrl.train.loop import train

    def cfg(epochs):
        return load_config(
            "configs/tiny.yaml",
            [
                f"output_dir={tmp_path / 'out'}",
                "data.path=reasoning_gym:basic_arithmetic",
                "data.reasoning_gym.initial=24",
                "data.reasoning_gym.per_poll=8",
                f"data.reasoning_gym.options={json.dumps(SMALL)}",
                f"schedule.epochs={epochs}",
            ],
        )

    train(cfg(1))
    summary = train(cfg(2), resume=True)
    assert summary["epochs_run"] == 2
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    data = [r for r in lines if r["phase"] == "data"]
    # epoch 0: the first poll; each epoch then absorbs per_poll more (the resumed run rebuilt
    # the 24 + 8 it had from the checkpoint's cursor, then polled again, without duplicates)
    assert [r["data/new_examples"] for r in data] == [24, 8, 8]
    assert [r["data/duplicates"] for r in data] == [0, 0, 0]
    last = data[-1]
    assert last["data/train_size"] + last["data/val_size"] + last["data/test_size"] == 40
    grpo = [r for r in lines if r["phase"] == "grpo"]
    assert grpo and all(0.0 <= r["train/reward/correctness"] <= 1.0 for r in grpo)
    state = json.loads((tmp_path / "out" / "checkpoints" / "epoch-0002" / "state.json").read_text())
    assert state["data"]["cursors"] == {"reasoning_gym:basic_arithmetic": {"index": 40}}


def test_missing_package_is_a_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import now fails, as uninstalled
    with pytest.raises(ConfigError, match=r"pip install 'asrl\[gym\]'"):
        preflight(load_config("configs/tiny.yaml", ["data.path=reasoning_gym:basic_arithmetic"]))
