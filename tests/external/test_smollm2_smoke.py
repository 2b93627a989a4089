"""One short ASRL run of the real embedded SmolLM2-135M (about a minute on a 2-core CPU)."""

import json

import pytest

from asrl.config import load_config
from asrl.train.loop import train


@pytest.mark.slow
def test_smollm2_short_asrl_run_learns_the_format(tmp_path):
    cfg = load_config(
        "configs/demo.yaml",
        [
            f"output_dir={tmp_path / 'out'}",
            f"data.path={tmp_path / 'data.jsonl'}",
            "data.generate.count=90",
            "schedule.epochs=1",
            "eval.max_examples=6",
            "eval.max_new_tokens=48",
            "grpo.questions_per_epoch=2",
            "grpo.num_generations=4",
            "grpo.max_new_tokens=48",
        ],
    )
    summary = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["eval/after"]: r for r in lines if r["phase"] == "eval"}
    assert set(evals) == {"init", "sft", "grpo"}
    # one SFT phase on ~70 examples teaches the real model much of the format: the held-out
    # loss of the references drops well below the untrained model's
    assert evals["sft"]["eval/val_loss"] < 0.7 * evals["init"]["eval/val_loss"]
    grpo = next(r for r in lines if r["phase"] == "grpo")
    assert grpo["compute/tokens_generated"] > 0 and grpo["train/reward_mean"] is not None
    assert summary["epochs_run"] == 1
