"""Graceful stop on SIGTERM / Ctrl-C: finish the optimizer step in flight, then stop.

Why no new checkpoint here: checkpoints are taken at phase boundaries (``checkpoint.every:
phase``); a state in the middle of a phase would also need the phase's data order, the
rollouts in hand and the LR position. So a stop drops the phase in flight; ``--resume``
redoes it from the last phase-boundary checkpoint, exactly as an uninterrupted run would
have (seeds derive from (seed, epoch, phase); what was logged after the checkpoint is
dropped on resume). A second signal stops at once.

Under ``accelerate launch`` (torchrun) one stop often arrives twice: Ctrl-C, or a scheduler
that signals the whole process group, reaches every worker directly, and the launcher then
forwards the same signal to each worker. A repeat within ``REPEAT_S`` of the first signal in a
multi-process run is therefore that echo, not a user insisting, and is ignored.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from asrl.errors import Interrupted

_requested: int | None = None  # the signal number received, once one has been
_requested_at = 0.0  # when (time.monotonic())
REPEAT_S = 2.0  # multi-process runs: a repeat this soon is the launcher's echo (see above)


def _on_signal(signum: int, frame: Any) -> None:
    global _requested, _requested_at
    from asrl.parallel import distributed

    now = time.monotonic()
    if _requested is not None:
        if distributed.launched_world_size() > 1 and now - _requested_at < REPEAT_S:
            return  # the launcher forwarding the signal this process already had
        raise KeyboardInterrupt  # second signal: the user means now
    _requested, _requested_at = signum, now


def check() -> None:
    """Raise :class:`Interrupted` if a stop was asked for; call it at safe points only.

    In a multi-process run every process calls this at the same points, and they agree: a
    signal that reached any of them stops all of them at the same step.
    """
    from asrl.parallel import distributed

    requested = _requested
    d = distributed.current()
    if d.active and d.sum([float(requested or 0)])[0] > 0:
        requested = requested or int(signal.SIGTERM)
    if requested is not None:
        raise Interrupted(requested)


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Install the SIGINT/SIGTERM handlers for the duration (main thread only)."""
    global _requested
    _requested = None
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _requested = None
