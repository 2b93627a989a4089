"""End to end on a tiny random Llama/Qwen3: seconds on CPU, real model code, real files."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asrl.config import load_config
from asrl.train.loop import train

CONTRACT_EVAL = {"eval/format_accuracy", "eval/correctness", "eval/val_loss", "eval/after"}
REPO = Path(__file__).resolve().parents[2]


def tiny(tmp_path, *overrides):
    return load_config(
        "configs/tiny.yaml",
        [f"output_dir={tmp_path / 'out'}", f"data.path={tmp_path / 'data.jsonl'}", *overrides],
    )


def read_metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["tiny-random-llama", "tiny-random-qwen3"])
def test_asrl_run_writes_contract_and_trains_lora(tmp_path, arch):
    cfg = tiny(tmp_path, f"model.name={arch}")
    summary = train(cfg)
    out = tmp_path / "out"
    lines = read_metrics(out)
    for rec in lines:
        assert isinstance(rec["epoch"], int) and isinstance(rec["time"], float)
        assert rec["phase"] in {"data", "sft", "grpo", "eval", "test"}
    # per epoch: data, sft, eval(after sft), grpo, eval(after grpo); epoch 0: data + init
    # eval; at the end, once, the test split
    assert [(r["epoch"], r["phase"]) for r in lines] == [
        (0, "data"),
        (0, "eval"),
        (1, "data"),
        (1, "sft"),
        (1, "eval"),
        (1, "grpo"),
        (1, "eval"),
        (2, "data"),
        (2, "sft"),
        (2, "eval"),
        (2, "grpo"),
        (2, "eval"),
        (2, "test"),
    ]
    evals = [r for r in lines if r["phase"] == "eval"]
    assert all(r.keys() >= CONTRACT_EVAL for r in evals)
    assert [r["eval/after"] for r in evals] == ["init", "sft", "grpo", "sft", "grpo"]
    sft = [r for r in lines if r["phase"] == "sft"]
    assert all("train/sft_loss" in r and "perf/tokens_per_s" in r for r in sft)
    grpo = [r for r in lines if r["phase"] == "grpo"]
    assert all({"train/grpo_loss", "train/reward_mean", "train/kl"} <= r.keys() for r in grpo)
    assert lines[0]["data/train_size"] > 0 and "data/version" in lines[0]

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["method"] == "asrl" and on_disk["seed"] == 0 and on_disk["epochs_run"] == 2
    assert {"epochs_to_format_90", "final", "best"} <= on_disk.keys()
    assert on_disk["final"]["epoch"] == 2 and summary["epochs_run"] == 2
    assert on_disk["stopped"] is None and on_disk["budget_s"] is None
    assert on_disk["elapsed_s"] > 0 and on_disk["start_adapter"] is None
    test = on_disk["test"]
    assert test == {**lines[-1], "n": int(lines[-1]["test/n"])} and test["n"] >= 1
    assert {"test/format_accuracy", "test/correctness", "test/val_loss"} <= test.keys()
    assert not any(k.startswith("eval/") for k in test)

    # LoRA B matrices start at zero (PEFT init): after training they must not be
    weights = load_file(out / "checkpoints" / "epoch-0002" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch-0001.p1",
        "epoch-0002",
    ]


def test_resume_continues_where_it_stopped(tmp_path):
    train(tiny(tmp_path, "schedule.epochs=1"))
    summary = train(tiny(tmp_path, "schedule.epochs=2"), resume=True)
    assert summary["epochs_run"] == 2
    lines = read_metrics(tmp_path / "out")
    epochs = [r["epoch"] for r in lines if r["phase"] == "sft"]
    assert epochs == [1, 2]  # epoch 1 not redone, epoch 2 added
    # the first run's test line went with what came after its checkpoint: one test, at the end
    assert [(r["epoch"], r["phase"]) for r in lines if r["phase"] == "test"] == [(2, "test")]
    assert lines[-1]["phase"] == "test" and summary["test"]["epoch"] == 2


def test_refuses_to_overwrite_a_run(tmp_path):
    from asrl.config import ConfigError

    train(tiny(tmp_path, "schedule.epochs=1"))
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny(tmp_path, "schedule.epochs=1"))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One ``asrl train`` on the tiny config, as a user runs it: (its command, the result)."""
    tmp = tmp_path_factory.mktemp("cli")
    cmd = [
        sys.executable,
        "-m",
        "asrl",
        "train",
        "-c",
        "configs/tiny.yaml",
        "-o",
        str(tmp / "cli"),
        "--set",
        f"data.path={tmp / 'd.jsonl'}",
        "--set",
        "schedule.epochs=1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    return tmp, cmd, done


def test_cli_train_and_config_errors(cli_run):
    tmp, cmd, done = cli_run
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp / "cli" / "summary.json").is_file()
    bad = subprocess.run(
        cmd[:-2] + ["--set", "grpo.num_generations=1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "grpo.num_generations" in bad.stderr


OUR_LINES = ("asrl: ", "data: ", "model: ", "rollout engine: ", "epoch ", "done: ")


def test_cli_console_shows_our_lines_only(cli_run):
    _, _, done = cli_run
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [x.strip() for x in re.split(r"[\r\n]", done.stdout + done.stderr) if x.strip()]
    noise = [x for x in lines if "Warning" in x or "[WARNING]" in x or "deprecated" in x]
    assert not noise, noise  # transformers' / PEFT's / DeepSpeed's notices: fixed or silenced
    assert all(x.startswith(OUR_LINES) for x in lines), lines
    final = lines[-1]  # in percent, as the epoch lines print them
    assert re.fullmatch(
        r"done: val format \d+\.\d%, correct \d+\.\d%; "
        r"test \(n=\d+\): format \d+\.\d%, correct \d+\.\d%; summary in .*summary\.json",
        final,
    )
    epoch = next(x for x in lines if x.startswith("epoch   1"))
    summary = json.loads(Path(final.rsplit(" ", 1)[1]).read_text())["final"]
    fmt = f"{100 * summary['eval/format_accuracy']:.1f}%"
    assert f"format {fmt}," in final and f"fmt {fmt:>6}" in epoch  # the same number


def test_saving_a_model_keeps_deepspeeds_import_notice_quiet():
    # save_pretrained imports DeepSpeed through accelerate (when installed); on a machine
    # without GPU that import logs "[WARNING] ... Setting accelerator to CPU"
    pytest.importorskip("deepspeed")
    script = (
        "import sys, tempfile\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "from asrl import quiet\n"
        "cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,\n"
        "                  num_attention_heads=2, num_key_value_heads=1, vocab_size=64)\n"
        "with quiet.library_call():\n"
        "    LlamaForCausalLM(cfg).save_pretrained(tempfile.mkdtemp())\n"
        "print('deepspeed imported:', 'deepspeed' in sys.modules)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "deepspeed imported: True" in r.stdout  # the import this is about did happen
    assert "[WARNING]" not in r.stdout + r.stderr and "Setting accelerator" not in r.stdout


def test_merged_generation_matches_unmerged(tmp_path):
    # The fast path (LoRA merged) must compute the same function as the adapter model.
    from asrl.model.loading import load_policy

    policy = load_policy(load_config("configs/tiny.yaml").model, seed=1)
    for name, p in policy.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a non-trivial adapter
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        plain = policy.model(input_ids=ids).logits
        with policy.merged():
            merged = policy.model(input_ids=ids).logits
        after = policy.model(input_ids=ids).logits
    assert torch.allclose(plain, merged, atol=1e-4)
    assert torch.allclose(plain, after, atol=1e-5)  # unmerge restored the base weights


@pytest.mark.parametrize("epochs", [2, 1])
def test_resume_mid_epoch_from_a_phase_checkpoint_equals_uninterrupted(tmp_path, epochs):
    # Run A: `epochs` epochs. B: the same run, "crashed" after the last epoch's SFT phase
    # (its latest checkpoint is then epoch-000<epochs-1>.p1). Resuming B redoes only that
    # epoch's GRPO phase. With epochs=1 the checkpoint is inside the first epoch: the
    # initial evaluation must not be run (and logged) again with the trained adapter.
    import shutil

    a = tmp_path / "a"
    train(tiny(a, f"schedule.epochs={epochs}"))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "out" / "checkpoints" / f"epoch-{epochs:04d}")
    (b / "out" / "summary.json").unlink()
    cfg_b = load_config(
        "configs/tiny.yaml",
        [f"output_dir={b / 'out'}", f"data.path={a / 'data.jsonl'}", f"schedule.epochs={epochs}"],
    )
    train(cfg_b, resume=True)

    def strip(records):  # wall-clock and speed readings differ between any two runs
        return [
            {k: v for k, v in r.items() if not k.startswith(("perf/", "time")) and k != "time"}
            for r in records
        ]

    got, want = strip(read_metrics(b / "out")), strip(read_metrics(a / "out"))
    # every line and key equal; floats to 1e-6 relative: generation merges LoRA into the base
    # weights and unmerges it, which moves them by an ulp here and there, so a forward-pass
    # statistic (train/entropy) can differ in its 8th digit (Intel Xeon with AMX, 2026-12-02)
    # while a wrong resume changes the questions, the rewards or the weights outright
    assert [r.keys() for r in got[:-1]] == [r.keys() for r in want[:-1]]
    for g, w in zip(got[:-1], want[:-1]):
        for key, value in w.items():
            if isinstance(value, float):
                assert g[key] == pytest.approx(value, rel=1e-6, abs=1e-12, nan_ok=True), key
            else:
                assert g[key] == value, key
    # the final test line: the same keys and counts, its losses equal to float rounding.
    # Generation merges LoRA into the base weights and unmerges it, which moves them by an
    # ulp here and there; A's base has been through more of those cycles than B's, which
    # was loaded afresh at the resume (a few ulps of val_loss at 10.6)
    assert got[-1]["phase"] == want[-1]["phase"] == "test" and got[-1].keys() == want[-1].keys()
    for k, v in want[-1].items():
        assert v == got[-1][k] or math.isclose(v, got[-1][k], rel_tol=1e-6), k
    last = f"epoch-{epochs:04d}"
    wa = load_file(a / "out" / "checkpoints" / last / "adapter_model.safetensors")
    wb = load_file(b / "out" / "checkpoints" / last / "adapter_model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
