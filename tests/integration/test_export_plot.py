"""asrl export (adapter / merged) and asrl plot, on one tiny random-Llama run (seconds on CPU)."""

import json
from pathlib import Path

import pytest
import torch

from asrl.analysis.plots import plot_run
from asrl.cli import main
from asrl.config import load_config
from asrl.errors import ExportError
from asrl.model.export import export_run

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from asrl.train.loop import train

    tmp = tmp_path_factory.mktemp("export")
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"output_dir={tmp / 'run'}",
            f"data.path={tmp / 'data.jsonl'}",
            "schedule.epochs=1",
            "model.autocast=none",
        ],
    )
    train(cfg)
    return tmp / "run"


def trained_policy(run_dir):
    """The run's PEFT policy with the checkpoint's adapter, loaded here independently."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from asrl.config import config_from_dict
    from asrl.model.loading import load_policy

    data = json.loads((run_dir / "config.json").read_text())
    cfg = config_from_dict({"model": data["model"], "seed": data["seed"]})
    cfg.model.device, cfg.model.autocast = "cpu", "none"
    policy = load_policy(cfg.model, seed=cfg.seed)
    ckpt = run_dir / "checkpoints" / "epoch-0001"
    set_peft_model_state_dict(policy.model, load_file(ckpt / "adapter_model.safetensors"))
    policy.model.eval()
    return policy, cfg


def sample_ids(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, return_tensors="pt").input_ids


def test_merged_export_loads_as_plain_transformers_model(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert main(["export", str(run_dir), str(out), "--merged"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    info = json.loads((out / "asrl_export.json").read_text())
    assert info["merged"] is True and info["checkpoint"] == "epoch-0001"
    assert (
        info["source_run"] == str(run_dir.resolve()) and info["base_model"] == "tiny-random-llama"
    )

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    policy, _ = trained_policy(run_dir)
    lora_b = [p for n, p in policy.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # a trained adapter, not the zero init

    ids = sample_ids(tok)
    assert torch.equal(ids, sample_ids(policy.tokenizer))  # same tokenizer and chat template
    with torch.no_grad():
        want = policy.model(input_ids=ids).logits
        got = model(input_ids=ids).logits
        with policy.model.disable_adapter():
            base = policy.model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert not torch.allclose(got, base, atol=1e-4)  # the adapter really is merged in

    gen = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[0] == 1 and ids.shape[1] < gen.shape[1] <= ids.shape[1] + 5
    assert torch.equal(gen[:, : ids.shape[1]], ids)


def test_adapter_export_loads_with_peft(run_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "adapter"
    export_run(run_dir, out, checkpoint="1")
    assert {"adapter_model.safetensors", "adapter_config.json", "asrl_export.json"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "asrl_export.json").read_text())["merged"] is False

    policy, _ = trained_policy(run_dir)
    from asrl.config import config_from_dict
    from asrl.model.loading import load_policy

    data = json.loads((run_dir / "config.json").read_text())
    cfg = config_from_dict({"model": data["model"], "seed": data["seed"]})
    cfg.model.autocast = "none"
    base = load_policy(cfg.model, seed=cfg.seed).model.unload()  # the base, as the run built it
    loaded = PeftModel.from_pretrained(base, out).eval()
    ids = sample_ids(policy.tokenizer)
    with torch.no_grad():
        assert torch.allclose(
            loaded(input_ids=ids).logits, policy.model(input_ids=ids).logits, atol=1e-5
        )


def test_export_errors(run_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("keep")
    with pytest.raises(ExportError, match="not empty.*--force"):
        export_run(run_dir, tmp_path / "busy")
    assert (tmp_path / "busy" / "x.txt").read_text() == "keep"
    export_run(run_dir, tmp_path / "busy", force=True)  # --force replaces it
    assert not (tmp_path / "busy" / "x.txt").exists()
    assert (tmp_path / "busy" / "adapter_model.safetensors").is_file()

    with pytest.raises(ExportError, match="'epoch-0007' not found.*have: .*epoch-0001"):
        export_run(run_dir, tmp_path / "a", checkpoint="epoch-0007")
    with pytest.raises(ExportError, match="refusing"):
        export_run(run_dir, run_dir, force=True)

    empty = tmp_path / "empty-run"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(ExportError, match="no checkpoint found"):
        export_run(empty, tmp_path / "b")
    assert main(["export", str(empty), str(tmp_path / "b")]) == 1
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_plot_from_a_run(run_dir, tmp_path):
    out = tmp_path / "curves.png"
    assert main(["plot", str(run_dir), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert plot_run(run_dir) == run_dir / "curves.png"  # the default output
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_with_only_epoch_zero_and_a_partial_line(tmp_path):
    lines = [
        {"epoch": 0, "phase": "data", "time": 1.0, "data/train_size": 45},
        {"epoch": 0, "phase": "eval", "time": 2.0, "eval/format_accuracy": 0.0,
         "eval/correctness": None, "eval/val_loss": 10.8, "eval/after": "init"},
    ]  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 1, "pha'
    (tmp_path / "metrics.jsonl").write_text(text)
    out = plot_run(tmp_path, tmp_path / "c.png")
    assert out.read_bytes()[:8] == PNG_MAGIC

    (tmp_path / "metrics.jsonl").write_text("")  # no records at all: every panel "no data"
    assert plot_run(tmp_path, tmp_path / "d.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["plot", str(tmp_path / "nope")]) == 1
