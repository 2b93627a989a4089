"""Reward functions for the GRPO-signal tests run in subprocesses (``reward.custom``).

``flat_for_some``: a constant for two synthetic records in three (their groups carry no
signal), otherwise a value that differs between completions. Every call appends
``RANK ids...`` to the file named by ``ASRL_TEST_REWARD_LOG``, if set.
"""

import os


def _flat(record_id: str) -> bool:
    return int(record_id.rsplit("-", 1)[1]) % 3 != 0


def flat_for_some(prompts, completions, id, **_):
    log = os.environ.get("ASRL_TEST_REWARD_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(" ".join([os.environ.get("RANK", "0"), *id]) + "\n")
    return [0.0 if _flat(i) else (sum(map(ord, c)) % 97) / 97 for i, c in zip(id, completions)]


def record_number(prompts, completions, id, **_):
    """The number in each completion's record id: which example a score was computed for."""
    return [float(i.rsplit("-", 1)[1]) for i in id]
