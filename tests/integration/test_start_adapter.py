"""model.adapter: a new run starting from a run directory, a checkpoint or an export.

One tiny source run (fp32: model.autocast=none, so numbers compare exactly), exported with
``asrl export``; new runs start from each form of it.
"""

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asrl.config import ConfigError, load_config
from asrl.model.export import export_run, load_trained_policy
from asrl.train.loop import train
from asrl.train.setup import build_run

QUICK = [
    "report_to=none",
    "model.autocast=none",
    "sft.max_examples_per_phase=8",
    "eval.max_examples=3",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(run directory, its adapter export, the data file): one finished 2-epoch run."""
    tmp = tmp_path_factory.mktemp("source")
    cfg = load_config(
        "configs/tiny.yaml",
        [f"output_dir={tmp / 'run'}", f"data.path={tmp / 'data.jsonl'}", "schedule.epochs=2"]
        + ["checkpoint.keep_last=3"]
        + QUICK,
    )
    train(cfg)
    export_run(tmp / "run", tmp / "export")
    return tmp / "run", tmp / "export", tmp / "data.jsonl"


def new_cfg(out: Path, data: Path, *overrides: str):
    return load_config(
        "configs/tiny.yaml", [f"output_dir={out}", f"data.path={data}", *QUICK, *overrides]
    )


def sample_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, return_tensors="pt").input_ids


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def built(tmp_path, name: str, data: Path, adapter: Path):
    run, _ = build_run(new_cfg(tmp_path / name, data, f"model.adapter={adapter}"))
    run.metrics.close()
    return run


def test_the_three_forms_give_the_exported_models_logits(source, tmp_path):
    from peft import PeftModel

    run_dir, export_dir, data = source
    ckpt = run_dir / "checkpoints" / "epoch-0002"
    want_policy, _ = load_trained_policy(run_dir)  # the run's last checkpoint, as export reads it
    ids = sample_ids(want_policy.tokenizer)
    want = logits(want_policy.model, ids)

    runs = {
        "run": built(tmp_path, "from-run", data, run_dir),
        "checkpoint": built(tmp_path, "from-ckpt", data, ckpt),
        "adapter": built(tmp_path, "from-export", data, export_dir),
    }
    sha = hashlib.sha256((ckpt / "adapter_model.safetensors").read_bytes()).hexdigest()
    for kind, run in runs.items():
        # the same base (same seed), the same fp32 adapter tensors, the same forward code:
        # bit-for-bit the same logits
        assert torch.equal(logits(run.policy.model, ids), want), kind
        rec = run.start_adapter
        assert rec["kind"] == kind and rec["sha256"] == sha and rec["r"] == 8
        assert rec["base_model"] == "tiny-random-llama" and rec["seed"] == 0
        # a new run: fresh optimizers, nothing resumed
        assert all(not opt.state for opt in run.optimizers.values())
    assert runs["run"].start_adapter["checkpoint"] == "epoch-0002"
    assert runs["adapter"].start_adapter["checkpoint"] is None

    # PEFT's own loading of the export: the same weights through PEFT's unfused LoRA
    # forward (base + B(A x) * s, where ours is one addmm: asrl/model/fused_lora.py). Equal in
    # exact arithmetic, but the float operations run in another order, so bit-for-bit
    # equality is up to the BLAS (on our CPU it is exact: max difference 0.0)
    base = load_trained_policy(run_dir)[0].model.unload()
    peft = PeftModel.from_pretrained(base, export_dir)
    got = logits(peft, ids)
    assert (got - want).abs().max() <= 1e-6, (got - want).abs().max()
    # and the adapter really moves the logits: a fresh LoRA (B = 0) is the base model
    with torch.no_grad(), peft.disable_adapter():
        assert (peft(input_ids=ids).logits - want).abs().max() > 1e-4


def test_a_named_checkpoint_is_taken_not_the_latest(source, tmp_path):
    run_dir, _, data = source
    older = run_dir / "checkpoints" / "epoch-0001"  # the latest is epoch-0002
    run = built(tmp_path, "from-older", data, older)
    want = load_file(older / "adapter_model.safetensors")
    last = load_file(run_dir / "checkpoints" / "epoch-0002" / "adapter_model.safetensors")
    got = {n.replace(".default", ""): p for n, p in run.policy.model.named_parameters()}
    assert all(torch.equal(got[k].detach(), v) for k, v in want.items())
    assert any(not torch.equal(v, last[k]) for k, v in want.items())  # epoch 2 trained on
    assert run.start_adapter["checkpoint"] == "epoch-0001"


def test_an_eval_only_run_from_the_export_scores_what_the_source_ended_with(source, tmp_path):
    run_dir, export_dir, data = source
    out = tmp_path / "eval-only"
    s = train(new_cfg(out, data, f"model.adapter={export_dir}", "schedule.time_budget_s=0"))
    src = json.loads((run_dir / "summary.json").read_text())
    assert s["epochs_run"] == 0 and s["start_adapter"]["kind"] == "adapter"
    assert json.loads((out / "summary.json").read_text())["start_adapter"] == s["start_adapter"]
    assert json.loads((out / "config.json").read_text())["model"]["adapter"] == str(export_dir)
    # the same weights on the same val and test examples: the same scores. The loss agrees
    # to float rounding, not bit for bit: generation merges LoRA into the base weights and
    # unmerges it, which leaves the source run's in-memory base a few ulps off its start
    assert math.isclose(s["initial"]["eval/val_loss"], src["final"]["eval/val_loss"], rel_tol=1e-5)
    assert math.isclose(s["test"]["test/val_loss"], src["test"]["test/val_loss"], rel_tol=1e-5)
    fresh = json.loads((run_dir / "summary.json").read_text())["initial"]["eval/val_loss"]
    assert not math.isclose(s["initial"]["eval/val_loss"], fresh, rel_tol=1e-4)


def test_resume_restores_its_own_checkpoint_not_the_adapter(source, tmp_path):
    _, export_dir, data = source
    adapter = tmp_path / "adapter-copy"
    shutil.copytree(export_dir, adapter)
    out = tmp_path / "b"
    first = train(new_cfg(out, data, f"model.adapter={adapter}", "schedule.epochs=1"))
    ckpt = out / "checkpoints" / "epoch-0001"
    mine = load_file(ckpt / "adapter_model.safetensors")
    theirs = load_file(adapter / "adapter_model.safetensors")
    assert any(not torch.equal(mine[k], theirs[k]) for k in mine)  # it trained from there

    run, epoch = build_run(
        new_cfg(out, data, f"model.adapter={adapter}", "schedule.epochs=2"), resume=True
    )
    run.metrics.close()
    assert epoch == 1 and run.optimizers["sft"].state  # resumed, with its moments
    params = {n.replace(".default", ""): p for n, p in run.policy.model.named_parameters()}
    assert all(torch.equal(params[k].detach(), v) for k, v in mine.items())

    shutil.rmtree(adapter)  # a resume never reads model.adapter again
    done = train(new_cfg(out, data, f"model.adapter={adapter}", "schedule.epochs=2"), resume=True)
    assert done["epochs_run"] == 2 and done["start_adapter"] == first["start_adapter"]


def _expect(tmp_path, match: str, *overrides: str) -> None:
    with pytest.raises(ConfigError, match=match):
        train(new_cfg(tmp_path / "x", tmp_path / "d.jsonl", *overrides))
    # refused before anything was written or loaded
    assert not (tmp_path / "x" / "metrics.jsonl").exists()
    assert not (tmp_path / "x" / "config.json").exists()


def test_mismatches_and_bad_paths_are_config_errors_naming_both_sides(source, tmp_path):
    run_dir, export_dir, _ = source
    a = f"model.adapter={export_dir}"
    _expect(tmp_path, r"has r=8; this config has model\.lora\.r=16", a, "model.lora.r=16")
    _expect(
        tmp_path,
        r"has lora_alpha=16, target_modules \['down_proj'.*\]; this config has "
        r"model\.lora\.alpha=32, model\.lora\.target_modules \['k_proj', 'q_proj'\]",
        a,
        "model.lora.alpha=32",
        "model.lora.target_modules=[q_proj,k_proj]",
    )
    _expect(
        tmp_path,
        r"trained on model\.name=tiny-random-llama; this config has "
        r"model\.name=tiny-random-qwen3",
        f"model.adapter={run_dir}",
        "model.name=tiny-random-qwen3",
    )
    _expect(tmp_path, r"built with seed=0; this config has seed=1", a, "seed=1")
    _expect(tmp_path, r"model\.adapter: .*nope does not exist", f"model.adapter={tmp_path}/nope")
    empty = tmp_path / "empty-run"
    (empty / "checkpoints").mkdir(parents=True)
    _expect(tmp_path, r"model\.adapter: no checkpoint found", f"model.adapter={empty}")
    merged = tmp_path / "merged"
    export_run(run_dir, merged, merged=True)
    _expect(tmp_path, r"is a merged model.*model\.name=", f"model.adapter={merged}")
    _expect(tmp_path, r"holds neither", f"model.adapter={tmp_path}")


def test_weights_that_do_not_fit_the_config_are_config_errors(source, tmp_path):
    """Config-level checks pass (the adapter_config.json is intact) but the weights file was
    altered: a missing LoRA tensor and a tensor of another width are each refused by name."""
    from safetensors.torch import save_file

    _, export_dir, _ = source
    weights = load_file(export_dir / "adapter_model.safetensors")
    lora_b = sorted(k for k in weights if "lora_B" in k)[0]
    lora_a = sorted(k for k in weights if "lora_A" in k)[0]
    for name, altered, match in (
        ("missing", {k: v for k, v in weights.items() if k != lora_b}, "does not match"),
        (
            "wider",
            {**weights, lora_a: torch.zeros(weights[lora_a].shape[0], 3)},
            "does not fit this model",
        ),
    ):
        bad = tmp_path / name
        shutil.copytree(export_dir, bad)
        save_file(altered, bad / "adapter_model.safetensors")
        with pytest.raises(ConfigError, match=rf"model\.adapter: .*{match}"):
            train(new_cfg(tmp_path / f"run-{name}", tmp_path / "d.jsonl", f"model.adapter={bad}"))
