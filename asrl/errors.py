"""Every exception asrl raises on purpose, in one place that imports nothing of ours.

A module that raises one imports it from here, so no module has to import a heavier one
(the config schema, the reward registry, the loop) just to name an error.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the key."""


class NoTrainingData(ConfigError):
    """A phase would have nothing to train on (no usable train record, or every one longer
    than data.max_length): the run stops before the model works, saying what to change."""


class RecordError(ValueError):
    """A record that cannot be used; the message is the quarantine reason."""


class RewardError(RuntimeError):
    """A reward function raised or returned something unusable; the message names it."""


class PartialRewardError(RuntimeError):
    """Raised by a reward function that scored some completions but not all (e.g. a judge
    that timed out on one). ``values`` holds what it has, None where it failed: with
    ``on_error: skip`` those are kept (one error counted); with ``stop`` the run stops."""

    def __init__(self, message: str, values: list[float | None]) -> None:
        super().__init__(message)
        self.values = values


class JudgeUnavailable(ConfigError):
    """The judge endpoint could not be used when the run started; the message names the URL."""


class JudgeError(PartialRewardError):
    """Some completions of a batch got no score (failed request or unparseable reply)."""


class TrainingDiverged(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


class Interrupted(Exception):
    """Raised at the next safe point (after an optimizer step, between phases)."""

    def __init__(self, signum: int, message: str = "interrupted") -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 Ctrl-C, 143 SIGTERM


class ExportError(Exception):
    """A problem with the run directory, the checkpoint or OUTDIR; the message says which."""


class PlotError(Exception):
    """A problem with the run directory or its metrics file."""
