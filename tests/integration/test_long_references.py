"""A run says, once, when train references need more new tokens than completions get
(grpo/eval.max_new_tokens): such completions are cut off before their answer. Real tiny runs,
in-process, with a zero time budget (the data refresh and the evaluations, no training)."""

import re

from asrl.config import load_config
from asrl.data.live import LiveDataset
from asrl.data.sources import open_source
from asrl.model.loading import load_tokenizer
from asrl.train.loop import train


def tiny(tmp_path, *overrides):
    return load_config(
        "configs/tiny.yaml",
        [
            f"output_dir={tmp_path / 'out'}",
            f"data.path={tmp_path / 'data.jsonl'}",
            "report_to=none",
            "eval.max_examples=2",
            "schedule.time_budget_s=0",
            *overrides,
        ],
    )


WARNING = re.compile(r"data: (\d+) of (\d+) train references \(\d+%\) need more than (\d+) new")


def test_references_longer_than_the_generation_budget_are_counted_and_named(tmp_path, capsys):
    cfg = tiny(tmp_path, "grpo.max_new_tokens=20", "eval.max_new_tokens=30")
    train(cfg)
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if WARNING.search(x)]  # once
    over, total, budget = map(int, WARNING.search(line).groups())
    data = LiveDataset([open_source(cfg.data.path, cfg.data, cfg.format.spec())], cfg.data.split)
    data.refresh()
    tok = load_tokenizer(cfg.model.name)
    need = [len(tok(ex.response, add_special_tokens=False)["input_ids"]) + 1 for ex in data.train]
    assert total == len(data.train) and budget == 20
    assert over == sum(n > 20 for n in need) and 0 < over < total  # direct records are short
    assert "eval.max_new_tokens=30 and grpo.max_new_tokens=20" in line
    assert f"raise to {max(need)} to fit them all" in line


def test_no_warning_when_every_reference_fits_or_the_method_samples_nothing(tmp_path, capsys):
    train(tiny(tmp_path / "a", "grpo.max_new_tokens=200", "eval.max_new_tokens=200"))
    # sft only: grpo.max_new_tokens is never used, so it is not a reason to warn
    train(tiny(tmp_path / "b", "schedule.method=sft", "eval.max_new_tokens=200"))
    assert "train references" not in capsys.readouterr().out
