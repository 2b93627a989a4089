"""report_to: wandb / trackio against the real libraries, with no network: train a tiny run
through the CLI, then read back what each library stored and compare it with metrics.jsonl.

wandb runs offline (WANDB_MODE=offline): the run is a ``.wandb`` file under OUTDIR/wandb/,
a LevelDB-style log of protobuf records that we read with wandb's own protobuf classes.
trackio runs locally: a SQLite database per project in $TRACKIO_DIR, read with trackio's
own storage class in a subprocess (trackio fixes its directory when first imported).
Every directory either library writes to is under the test's tmp dir. Each training is a
subprocess (an ``asrl train`` as a user runs it), ~10 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from asrl.tracking.trackers import scalar_values

FAST = ["sft.max_examples_per_phase=16", "eval.max_examples=2", "data.generate.count=30"]
BOTH = "report_to=[tensorboard,wandb,trackio]"
NEEDS = "the real {0} package is not installed (pip install -e '.[dev]' installs it)"


def needs(name: str):
    return pytest.importorskip(name, reason=NEEDS.format(name))


def tracker_env(root: Path) -> dict[str, str]:
    """Offline, and every wandb / trackio directory inside ``root``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WANDB_", "TRACKIO_")) and k not in ("SPACE_ID", "SPACE_REPO_NAME")
    }
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(root / "wandb"),
        WANDB_CACHE_DIR=str(root / "wandb-cache"),
        WANDB_CONFIG_DIR=str(root / "wandb-config"),
        WANDB_DATA_DIR=str(root / "wandb-data"),
        TRACKIO_DIR=str(root / "trackio"),
    )
    return env


def train_cli(root: Path, *sets: str, resume: bool = False, data: Path | None = None):
    cmd = [sys.executable, "-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o"]
    cmd += [str(root / "out"), "--set", f"data.path={data or root / 'data.jsonl'}"]
    for s in [*FAST, BOTH, *sets]:
        cmd += ["--set", s]
    proc = subprocess.run(
        cmd + (["--resume"] if resume else []),
        env=tracker_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------
# readers


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file: a 7-byte header (":W&B", magic 0xBEE1,
    version), then LevelDB log blocks of 32 KiB holding records, each with a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last piece of a record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), path
    pos, block, pieces = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / zero padding
            pos += left
            continue
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pieces = payload
        else:
            pieces += payload
        if kind in (1, 4):
            yield pb.Record.FromString(pieces)


def wandb_runs(out: Path) -> list[dict]:
    """Each offline run under ``out/wandb``, oldest first: its run record, its history
    rows by step, its exit code, and its files directory."""
    runs = []
    for f in out.glob("wandb/offline-run-*/run-*.wandb"):
        run: dict = {"history": {}, "exit_code": None, "files": f.parent / "files"}
        for r in wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run["run"] = r.run
            elif kind == "history":
                row = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in r.history.item
                }
                assert r.history.step.num not in run["history"], "one row per step"
                run["history"][r.history.step.num] = row
            elif kind == "exit":
                run["exit_code"] = r.exit.exit_code
        runs.append(run)
    return sorted(runs, key=lambda r: r["run"].start_time.ToNanoseconds())


TRACKIO_DUMP = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage as S
runs = []
for rec in S.get_run_records("asrl"):
    runs.append({"id": rec["id"], "name": rec["name"],
                 "logs": S.get_logs("asrl", run_id=rec["id"]),
                 "config": S.get_run_config("asrl", run_id=rec["id"])})
json.dump(runs, sys.stdout, default=str)
"""


def trackio_runs(root: Path) -> list[dict]:
    """Every run of project "asrl" in the local database, in creation order, with its
    logged rows merged by step."""
    proc = subprocess.run(
        [sys.executable, "-c", TRACKIO_DUMP],
        env=tracker_env(root),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    runs = json.loads(proc.stdout)
    for run in runs:
        by_step: dict[int, dict] = {}
        for row in run["logs"]:
            merged = by_step.setdefault(row["step"], {})
            merged.update({k: v for k, v in row.items() if k not in ("step", "timestamp")})
        run["history"] = by_step
    return runs


# ---------------------------------------------------------------------------------------
# checks


def assert_mirrors(history: dict[int, dict], lines: list[dict], steps: range) -> None:
    """Steps are ``steps`` exactly; at step n, the numeric values of metrics.jsonl line n,
    and no other scalar (the library's own ``_*`` keys and the sample tables aside)."""
    assert sorted(history) == list(steps)
    for step in steps:
        want = scalar_values(lines[step - 1])
        got = {
            k: v
            for k, v in history[step].items()
            if not k.startswith(("_", "samples/")) and not isinstance(v, dict)
        }
        assert got.keys() == want.keys(), step
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (step, key)


def sample_steps(lines: list[dict]) -> dict[str, list[int]]:
    """Where each sample tag belongs: the step of the metrics line that follows it."""
    return {
        "samples/grpo": [n for n, r in enumerate(lines, 1) if r["phase"] == "grpo"],
        "samples/eval/sft": [n for n, r in enumerate(lines, 1) if r.get("eval/after") == "sft"],
    }


def assert_grpo_table(rows: list[dict], rollouts: list[dict]) -> None:
    """One table row per logged rollout, with its prompt, output and reward components."""
    assert [r["prompt"] for r in rows] == [s["prompt"] for s in rollouts]
    assert [r["output"] for r in rows] == [s["output"] for s in rollouts]
    for row, s in zip(rows, rollouts):
        assert row["reward"] == pytest.approx(s["reward"])
        assert row["advantage"] == pytest.approx(s["advantage"])
        for name, value in s["rewards"].items():
            assert row[f"reward/{name}"] == pytest.approx(value)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """One 2-epoch ASRL run with TensorBoard, wandb and trackio, shared by the tests."""
    needs("wandb"), needs("trackio")
    root = tmp_path_factory.mktemp("real-a")
    (root / "stdout.txt").write_text(train_cli(root).stdout)
    return root


def test_wandb_offline_run_holds_metrics_jsonl(run_a):
    out = run_a / "out"
    lines = jsonl(out / "metrics.jsonl")
    (run,) = wandb_runs(out)
    assert run["run"].project == "asrl" and run["run"].display_name == "out"
    config = {u.key: json.loads(u.value_json) for u in run["run"].config.update}
    assert config["seed"] == 0 and config["schedule"]["method"] == "asrl"
    assert_mirrors(run["history"], lines, range(1, len(lines) + 1))
    assert run["exit_code"] == 0  # finished, not failed

    # sample tables: at the step of the line they belong to, as table files in the run
    rollouts = [s for s in jsonl(out / "samples.jsonl") if s["phase"] == "grpo"]
    for tag, steps in sample_steps(lines).items():
        logged = [n for n, row in run["history"].items() if row.get(f"{tag}/_type")]
        assert logged == steps, tag
    for epoch, step in enumerate(sample_steps(lines)["samples/grpo"], 1):
        ref = run["history"][step]
        assert ref["samples/grpo/_type"] == "table-file"
        table = json.loads((run["files"] / ref["samples/grpo/path"]).read_text())
        rows = [dict(zip(table["columns"], r)) for r in table["data"]]
        assert_grpo_table(rows, [s for s in rollouts if s["epoch"] == epoch])


def test_trackio_local_run_holds_metrics_jsonl(run_a):
    out = run_a / "out"
    lines = jsonl(out / "metrics.jsonl")
    (run,) = trackio_runs(run_a)
    assert run["name"] == "out"
    # finished once: trackio's exit hook found no unfinished run (it prints this each time)
    assert (run_a / "stdout.txt").read_text().count("* Run finished.") == 1
    assert run["config"]["seed"] == 0 and run["config"]["schedule"]["method"] == "asrl"
    assert_mirrors(run["history"], lines, range(1, len(lines) + 1))

    rollouts = [s for s in jsonl(out / "samples.jsonl") if s["phase"] == "grpo"]
    for tag, steps in sample_steps(lines).items():
        assert [n for n, row in run["history"].items() if tag in row] == steps, tag
    for epoch, step in enumerate(sample_steps(lines)["samples/grpo"], 1):
        table = run["history"][step]["samples/grpo"]
        assert table["_type"] == "trackio.table"
        assert_grpo_table(table["_value"], [s for s in rollouts if s["epoch"] == epoch])


def test_resume_is_a_new_run_from_the_resumed_step(run_a, tmp_path, crashed_after_sft):
    # B is A "crashed" after epoch 2's SFT phase: resuming redoes epoch 2's GRPO phase and
    # eval. Each library gets a second run, of the same name, holding exactly the redone
    # lines; A's run is left as it was.
    b, state = crashed_after_sft(run_a, tmp_path / "b")
    kept = state["metrics_lines"]
    train_cli(b, resume=True, data=run_a / "data.jsonl")
    lines = jsonl(b / "out" / "metrics.jsonl")
    old = jsonl(run_a / "out" / "metrics.jsonl")
    assert len(lines) == len(old) and kept < len(lines)

    first, second = wandb_runs(b / "out")
    assert first["history"] == wandb_runs(run_a / "out")[0]["history"]
    assert second["run"].display_name == "out" and second["run"].run_id != first["run"].run_id
    assert_mirrors(second["history"], lines, range(kept + 1, len(lines) + 1))
    assert second["exit_code"] == 0

    first, second = trackio_runs(b)
    assert first["name"] == second["name"] == "out" and first["id"] != second["id"]
    assert sorted(first["history"]) == list(range(1, len(old) + 1))
    assert_mirrors(second["history"], lines, range(kept + 1, len(lines) + 1))


WANDB_FAILED = """
import sys
from pathlib import Path
from asrl.tracking.trackers import WandbTracker
out = Path(sys.argv[1])
ok = WandbTracker(out / "ok", {})
ok.scalars(1, {"x": 1.0}, walltime=0.0)
ok.close()
failed = WandbTracker(out / "failed", {})
failed.scalars(1, {"x": 2.0}, walltime=0.0)
failed.close(failed=True)
"""


def test_wandb_run_stopped_by_an_error_is_marked_failed(tmp_path):
    needs("wandb")
    env = tracker_env(tmp_path) | {"WANDB_PROJECT": "mine"}
    for name in ("ok", "failed"):
        (tmp_path / name).mkdir()
    subprocess.run(
        [sys.executable, "-c", WANDB_FAILED, str(tmp_path)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (ok,), (failed,) = wandb_runs(tmp_path / "ok"), wandb_runs(tmp_path / "failed")
    assert ok["run"].project == failed["run"].project == "mine"  # WANDB_PROJECT wins
    assert (ok["exit_code"], failed["exit_code"]) == (0, 1)
    assert ok["history"][1]["x"] == 1 and failed["history"][1]["x"] == 2
