import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@pytest.fixture(autouse=True)
def _run_in_repo_root(monkeypatch):
    # configs/ paths in tests are relative to the repository root
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def crashed_after_sft():
    """A copy of a finished tiny run as if it crashed after epoch 2's SFT phase.

    Its latest checkpoint is epoch-0001.p1, but metrics.jsonl, samples.jsonl and the
    trackers already hold epoch 2's GRPO phase and eval. Returns (copy, that checkpoint's
    state.json).
    """

    def make(run: Path, dest: Path) -> tuple[Path, dict]:
        shutil.copytree(run, dest)
        shutil.rmtree(dest / "out" / "checkpoints" / "epoch-0002")
        (dest / "out" / "summary.json").unlink()
        state = dest / "out" / "checkpoints" / "epoch-0001.p1" / "state.json"
        return dest, json.loads(state.read_text())

    return make
