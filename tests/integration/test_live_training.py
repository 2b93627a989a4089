"""A run absorbs data appended by another process while it trains: no restart, nothing lost."""

import json
import subprocess
import sys

from asrl.config import load_config
from asrl.train.loop import train


def test_training_absorbs_records_appended_by_a_writer_process(tmp_path):
    data = tmp_path / "live.jsonl"
    seed_cmd = [sys.executable, "-m", "asrl", "data", "generate", "--to", str(data)]
    subprocess.run([*seed_cmd, "--count", "40"], check=True, timeout=60)
    # the writer keeps appending (a new pattern, like the paper's mid-run injection)
    writer = subprocess.Popen(
        [*seed_cmd, "--rate", "20/s", "--count", "300", "--seed", "7", "--pattern", "percent"]
    )
    try:
        cfg = load_config(
            "configs/tiny.yaml",
            [f"output_dir={tmp_path / 'out'}", f"data.path={data}", "schedule.epochs=3"],
        )
        train(cfg)
    finally:
        writer.terminate()
        writer.wait(timeout=30)
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    data_lines = [r for r in lines if r["phase"] == "data"]
    sizes = [r["data/train_size"] for r in data_lines]
    assert sizes[-1] > sizes[0], sizes  # the train split grew while the run went on
    assert sum(r["data/new_examples"] > 0 for r in data_lines[1:]) >= 2  # absorbed repeatedly
    assert all(r["data/rejected"] == 0 for r in data_lines)  # partial lines never parsed
    # every SFT phase trains on the whole train split as refreshed at the start of its epoch
    for epoch in range(1, 4):
        size = next(r["data/train_size"] for r in data_lines if r["epoch"] == epoch)
        sft = next(r for r in lines if r["phase"] == "sft" and r["epoch"] == epoch)
        assert sft["compute/examples_seen"] == size
    # nothing absorbed twice: the run's total equals the distinct ids in the file at its last look
    total = data_lines[-1]["data/train_size"] + data_lines[-1]["data/val_size"]
    total += data_lines[-1]["data/test_size"]
    assert total == sum(r["data/new_examples"] for r in data_lines)
    assert data_lines[-1]["data/version"] == 1 + sum(
        r["data/new_examples"] > 0 for r in data_lines[1:]
    )
