import os
import warnings

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@pytest.fixture(autouse=True)
def _run_in_repo_root(monkeypatch):
    # configs/ paths in tests are relative to the repository root
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
