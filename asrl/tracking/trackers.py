"""Experiment trackers behind one small interface: TensorBoard (default), trackio, wandb.

``MetricsLog`` (asrl/tracking/metrics.py) stays the source of truth: every line it writes to
metrics.jsonl goes to each tracker as scalars at ``step`` = that line's number in the file
(1-based), and the sample completions logged with it go as text at the same step. On
``--resume`` metrics.jsonl is cut back to the checkpoint's lines; ``rewind(step)`` tells a
tracker that everything from ``step`` on is about to be logged again.

trackio and wandb are imported only when ``report_to`` names them; ``check_available``
turns a missing package into a ConfigError while the config is validated. Both are tested
against the real libraries (wandb offline, trackio's local SQLite database), reading back
what they stored: tests/test_tracking_real.py.
"""

from __future__ import annotations

import importlib.util
import numbers
import os
from pathlib import Path
from typing import Any, Protocol

from asrl.errors import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


class Tracker(Protocol):
    def scalars(self, step: int, values: dict[str, float], walltime: float) -> None: ...

    def samples(self, step: int, tag: str, rows: list[dict[str, Any]]) -> None: ...

    def rewind(self, step: int) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def scalar_values(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics line (``time`` is the wall time, not a scalar)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "time" and isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


def samples_markdown(rows: list[dict[str, Any]]) -> str:
    """Sample completions as Markdown (TensorBoard's text plugin renders it)."""
    blocks = []
    for i, r in enumerate(rows, 1):
        head = f"**{i}.** epoch {r.get('epoch')}, {r.get('phase')}"
        if r.get("after"):
            head += f" after {r['after']}"
        if r.get("reward") is not None:
            parts = ", ".join(f"{k} {_fmt(v)}" for k, v in (r.get("rewards") or {}).items())
            head += f" · reward {_fmt(r['reward'])}" + (f" ({parts})" if parts else "")
        if r.get("advantage") is not None:
            head += f" · advantage {_fmt(r['advantage'])}"
        text = r.get("output", "")
        blocks.append(
            f"{head}\n\nprompt:\n\n{_code(r.get('prompt', ''))}\n\nmodel:\n\n{_code(text)}"
        )
    return "\n\n---\n\n".join(blocks)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _code(text: str) -> str:
    return "\n".join("    " + line for line in (text or "(empty)").splitlines())


class TensorBoardTracker:
    """Event files in ``logdir`` (OUTDIR/tensorboard/); the writer opens on first use."""

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self._writer: Any = None
        self._purge_step: int | None = None

    def _w(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step writes a SessionLog.START at that step: readers drop every older
            # event at or after it, i.e. what a crashed run logged past its checkpoint
            self._writer = SummaryWriter(str(self.logdir), purge_step=self._purge_step)
        return self._writer

    def scalars(self, step: int, values: dict[str, float], walltime: float) -> None:
        w = self._w()
        for key, v in values.items():
            w.add_scalar(key, v, global_step=step, walltime=walltime)
        w.flush()  # a few lines per phase: flush so a watching TensorBoard sees them now

    def samples(self, step: int, tag: str, rows: list[dict[str, Any]]) -> None:
        self._w().add_text(tag, samples_markdown(rows), global_step=step)

    def rewind(self, step: int) -> None:
        """Drop the events at ``step`` and after: a crashed run logged them past its checkpoint.

        They are removed from the files (so any reader, whenever it starts, sees each step
        once), and the next writer opens with ``purge_step`` (a TensorBoard already watching
        drops what it had loaded).
        """
        self.close()
        self._purge_step = step
        for path in sorted(self.logdir.glob("*tfevents*")):
            _drop_events_from(path, step)

    def close(self, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _drop_events_from(path: Path, step: int) -> None:
    """Rewrite an event file without its events at ``step`` or later (atomically)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    records = list(RawEventFileLoader(str(path)).Load())  # a record cut short is skipped
    events = [Event.FromString(r) for r in records]
    kept = [r for r, e in zip(records, events) if e.step < step or e.HasField("file_version")]
    if len(kept) == len(records):
        return
    tmp = path.with_name(".rewind.tmp")  # no "tfevents" in the name: readers ignore it
    with tmp.open("wb") as f:
        writer = RecordWriter(f)
        for r in kept:
            writer.write(r)
    tmp.replace(path)


class _RunTracker:
    """trackio and wandb share wandb's API: init -> log(dict, step) -> finish, plus Table.

    Each process starts its own run (a resumed training appears as a new run, of the same
    name, continuing at the resumed step), so a run never holds the points a crash left
    behind. The run starts on the first point logged.
    """

    module_name = ""

    def __init__(self, out: Path, config: dict[str, Any]) -> None:
        self.lib = importlib.import_module(self.module_name)
        self.out, self.config = out, config
        self._run: Any = None

    def _init(self) -> Any:
        raise NotImplementedError

    def _r(self) -> Any:
        if self._run is None:
            self._run = self._init()
        return self._run

    def scalars(self, step: int, values: dict[str, float], walltime: float) -> None:
        # the samples of a phase are logged at the step of the line that follows them, so
        # both go into one row of the run's history (wandb merges logs at the same step)
        self._r().log(values, step=step)

    def samples(self, step: int, tag: str, rows: list[dict[str, Any]]) -> None:
        if not hasattr(self.lib, "Table"):  # older trackio: scalars only
            return
        cols, data = samples_table(rows)
        self._r().log({tag: self.lib.Table(columns=cols, data=data)}, step=step)

    def rewind(self, step: int) -> None:
        pass  # the run is created after the rewind, and starts at ``step``

    def close(self, failed: bool = False) -> None:
        if self._run is not None:
            self._finish(self._run, failed)
            self._run = None

    def _finish(self, run: Any, failed: bool) -> None:
        run.finish()


def samples_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Sample completions as table columns and rows: one column per reward function."""
    parts = list(dict.fromkeys(k for r in rows for k in (r.get("rewards") or {})))
    cols = ["epoch", "phase", "after", "prompt", "output", "reward", "advantage"]
    data = [
        [r.get(c) for c in cols] + [(r.get("rewards") or {}).get(k) for k in parts] for r in rows
    ]
    return cols + [f"reward/{k}" for k in parts], data


class TrackioTracker(_RunTracker):
    """Local by default: a SQLite database per project in ``$TRACKIO_DIR`` (default
    ``~/.cache/huggingface/trackio``); ``trackio show`` opens the dashboard."""

    module_name = "trackio"

    def _init(self) -> Any:
        return self.lib.init(project="asrl", name=self.out.name, config=self.config)

    def _finish(self, run: Any, failed: bool) -> None:
        # trackio.finish() also forgets the run as its "current" one; run.finish() alone
        # leaves it there, and trackio's exit hook finishes it a second time
        current = getattr(getattr(self.lib, "context_vars", None), "current_run", None)
        if current is not None and current.get() is run:
            self.lib.finish()
        else:
            run.finish()


class WandbTracker(_RunTracker):
    """The run's files go to OUTDIR/wandb/; ``WANDB_MODE=offline`` keeps them there
    (``wandb sync`` uploads them later)."""

    module_name = "wandb"

    def _init(self) -> Any:
        # an explicit project= would override WANDB_PROJECT; entity and mode come from
        # WANDB_ENTITY / WANDB_MODE (or the wandb login) as usual
        return self.lib.init(
            project=os.environ.get("WANDB_PROJECT") or "asrl",
            name=self.out.name,
            dir=str(self.out),
            config=self.config,
        )

    def _finish(self, run: Any, failed: bool) -> None:
        # a run that stopped on an error or a signal shows as failed, not finished
        run.finish(exit_code=1 if failed else 0)


def enabled(report_to: list[str]) -> list[str]:
    """The trackers asked for, in order, without duplicates; ``[]`` / ``["none"]``: none."""
    return list(dict.fromkeys(r for r in report_to if r != "none"))


def check_available(report_to: list[str]) -> None:
    """A ConfigError naming the pip command for each tracker whose package is missing."""
    for name in enabled(report_to):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(
                f"report_to: '{name}' needs the {PACKAGES[name]} package, which is not "
                f"installed: pip install {PACKAGES[name]} (or remove it from report_to)"
            )


def make_trackers(report_to: list[str], out: Path, config: dict[str, Any]) -> list[Tracker]:
    check_available(report_to)
    made: dict[str, Any] = {
        "tensorboard": lambda: TensorBoardTracker(out / "tensorboard"),
        "trackio": lambda: TrackioTracker(out, config),
        "wandb": lambda: WandbTracker(out, config),
    }
    return [made[name]() for name in enabled(report_to)]
