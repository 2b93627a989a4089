"""Hugging Face datasets as sources: save_to_disk directories and parquet files written here
by `datasets` itself, column mapping, quarantine, resume by row count. Nothing is downloaded."""

import itertools
import json

import datasets
import pytest

from asrl.config import ConfigError, load_config
from asrl.data import hf
from asrl.data.hf import HFSource, map_columns
from asrl.data.live import LiveDataset
from asrl.data.sources import JsonlDir, open_source
from asrl.rewards.builtin import RewardSet


def rows(n, start=0):
    return [
        {"id": f"r{i}", "prompt": f"What is {i} + 1?", "response": f"{i + 1}", "answer": str(i + 1)}
        for i in range(start, start + n)
    ]


def ids(ds):
    return sorted(e.id for part in ds.splits.values() for e in part)


def test_save_to_disk_dataset_is_read_once(tmp_path):
    datasets.Dataset.from_list(rows(12)).save_to_disk(str(tmp_path / "saved"))
    src = open_source(tmp_path / "saved")
    assert isinstance(src, HFSource) and src.kind == "saved"
    ds = LiveDataset([src], quarantine=tmp_path / "q.jsonl")
    first = ds.refresh()
    assert first.new == 12 and first.rejected == 0
    assert ids(ds) == sorted(f"r{i}" for i in range(12))
    ex = next(e for e in ds.train + ds.splits["val"] + ds.splits["test"] if e.id == "r3")
    assert ex.prompt_text == "What is 3 + 1?" and ex.response == "4" and ex.answer == "4"
    assert ds.refresh().new == 0  # a snapshot: nothing more, ever
    assert src.state() == {"rows": 12}


def test_dataset_dict_split_is_chosen_and_a_wrong_one_is_named(tmp_path):
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows(5)),
            "test": datasets.Dataset.from_list(rows(3, 100)),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    cfg = load_config("configs/tiny.yaml", [f"data.path={tmp_path / 'dd'}", "data.hf.split=test"])
    ds = LiveDataset([open_source(cfg.data.path, cfg.data)])
    ds.refresh()
    assert ids(ds) == ["r100", "r101", "r102"]
    with pytest.raises(ConfigError, match=r"'validation' is not a split .* train, test"):
        list(HFSource(str(tmp_path / "dd"), split="validation").poll())


def test_parquet_with_column_mapping_keeps_other_columns_for_rewards(tmp_path):
    table = [
        {
            "uid": f"q{i}",
            "question": f"Double {i}?",
            "solution": f"<|thinking|>\n[LOGIC]{i}*2[/LOGIC]\n<|/thinking|>\n{2 * i}",
            "final": 2 * i,
            "answer": "a worked solution we do not use as the answer",
            "difficulty": i % 3,
        }
        for i in range(6)
    ]
    datasets.Dataset.from_list(table).to_parquet(str(tmp_path / "d.parquet"))
    cfg = load_config(
        "configs/tiny.yaml",
        [
            f"data.path={tmp_path / 'd.parquet'}",
            "data.columns.id=uid",
            "data.columns.prompt=question",
            "data.columns.response=solution",
            "data.columns.answer=final",
        ],
    )
    src = open_source(cfg.data.path, cfg.data)
    assert isinstance(src, HFSource) and src.kind == "parquet"
    ds = LiveDataset([src])
    assert ds.refresh().new == 6
    by_id = {e.id: e for part in ds.splits.values() for e in part}
    ex = by_id["q4"]
    assert ex.prompt_text == "Double 4?" and ex.answer == "8" and ex.response.endswith("\n8")
    assert ex.extra == {"difficulty": 1}  # the unmapped 'answer' column does not leak in
    columns = RewardSet.columns([by_id["q4"], by_id["q5"]])
    assert columns["difficulty"] == [1, 2]  # other columns reach reward functions, as in TRL


def test_map_columns_rules():
    row = {"question": "q", "prompt": "shadowed", "resp": "r", "score": None, "tag": "x"}
    cols = {"prompt": "question", "response": "resp", "answer": "answer"}
    assert map_columns(row, cols) == {"prompt": "q", "response": "r", "tag": "x"}


def test_parquet_directory_and_glob_read_in_name_order(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    datasets.Dataset.from_list(rows(4, 10)).to_parquet(str(d / "part-1.parquet"))
    datasets.Dataset.from_list(rows(3, 0)).to_parquet(str(d / "part-0.parquet"))
    for spec in (d, f"{d}/part-*.parquet"):
        src = open_source(spec)
        assert isinstance(src, HFSource)
        got = [r.data["id"] for r in src.poll()]
        assert got == ["r0", "r1", "r2", "r10", "r11", "r12", "r13"]
    assert isinstance(open_source(tmp_path), JsonlDir)  # no parquet at its top level


def test_missing_parquet_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no parquet file"):
        open_source(tmp_path / "nope.parquet")
    with pytest.raises(ConfigError, match="no parquet file"):
        open_source(f"{tmp_path}/*.parquet")


def test_bad_rows_are_quarantined_and_the_rest_absorbed(tmp_path):
    table = rows(4) + [
        {"id": "empty", "prompt": "q", "response": "  ", "answer": None},
        {"id": "noprompt", "prompt": None, "response": "r", "answer": None},
        {"id": "noanswer", "prompt": "q", "response": "r", "answer": None},
    ]
    datasets.Dataset.from_list(table).to_parquet(str(tmp_path / "d.parquet"))
    q = tmp_path / "q.jsonl"
    ds = LiveDataset([open_source(tmp_path / "d.parquet")], quarantine=q)
    res = ds.refresh()
    assert res.new == 5 and res.rejected == 2  # a null answer is no answer: 'noanswer' is fine
    bad = [json.loads(x) for x in q.read_text().splitlines()]
    assert [b["where"] for b in bad] == ["d.parquet:row 4", "d.parquet:row 5"]
    assert "empty response" in bad[0]["reason"] and "missing 'prompt'" in bad[1]["reason"]
    assert json.loads(bad[0]["raw"])["id"] == "empty"


@pytest.mark.parametrize("kind", ["parquet", "saved"])
def test_resume_by_row_count_yields_no_duplicates(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(hf, "BATCH_ROWS", 3)  # cursors land inside batches and across files
    if kind == "parquet":
        (tmp_path / "p").mkdir()
        datasets.Dataset.from_list(rows(7, 0)).to_parquet(str(tmp_path / "p" / "a.parquet"))
        datasets.Dataset.from_list(rows(6, 7)).to_parquet(str(tmp_path / "p" / "b.parquet"))
        spec = tmp_path / "p"
    else:
        datasets.Dataset.from_list(rows(13)).save_to_disk(str(tmp_path / "s"))
        spec = tmp_path / "s"
    everything = [r.data["id"] for r in open_source(spec).poll()]
    assert everything == [f"r{i}" for i in range(13)]
    for k in (0, 2, 3, 7, 8, 13):
        first = open_source(spec)
        taken = [r.data["id"] for r in itertools.islice(first.poll(), k)]
        state = json.loads(json.dumps(first.state()))  # as a checkpoint stores it
        resumed = open_source(spec)
        resumed.restore(state)
        rest = [r.data["id"] for r in resumed.poll()]
        assert taken + rest == everything, k  # nothing skipped, nothing twice
        replay = open_source(spec)
        replay.restore_until(state)
        assert [r.data["id"] for r in replay.poll()] == taken  # rebuilds what the run had
        assert [r.data["id"] for r in replay.poll()] == everything[k:]


def test_hub_name_offline_gives_an_actionable_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    src = open_source("hf:someone/some-dataset")
    assert isinstance(src, HFSource) and src.kind == "hub"  # nothing loaded yet
    with pytest.raises(ConfigError, match="cannot load the Hugging Face dataset") as e:
        list(src.poll())
    assert "save_to_disk" in str(e.value)


def test_unknown_column_field_is_rejected(tmp_path):
    datasets.Dataset.from_list(rows(1)).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(ConfigError, match="unknown field"):
        HFSource(str(tmp_path / "d.parquet"), columns={"question": "q"})
    with pytest.raises(ConfigError, match="data.columns.question"):
        load_config("configs/tiny.yaml", ["data.columns.question=q"])
