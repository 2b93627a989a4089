"""A clean console: library notices known to be harmless, silenced narrowly where our own
calls provoke them. Warnings that may matter are left alone.

``asrl -v`` (``verbose(True)``) turns all of this off: every library message comes back.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_VERBOSE = False

# PEFT reads transformers' deprecated ``is_gradient_checkpointing`` property whenever it
# wraps a model (get_peft_model, PeftModel.from_pretrained): a FutureWarning about PEFT's
# code, not ours, with nothing for a user to change.
GRADIENT_CHECKPOINTING = r"`is_gradient_checkpointing` is deprecated"
# ``save_pretrained`` unwraps the model through accelerate, which imports DeepSpeed (when it
# is installed) only to test ``isinstance(model, DeepSpeedEngine)``; importing DeepSpeed on
# a machine without a GPU logs this at WARNING level. DeepSpeed is not used by such a run.
DEEPSPEED_CPU = "Setting accelerator to CPU"


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def verbose(on: bool) -> None:
    """``on``: show every library message (``-v``); off: the clean console (default).

    Off, transformers' and the Hub's progress bars (loading weights, writing shards) are
    hidden too; our own phase bars stay.
    """
    global _VERBOSE
    _VERBOSE = on
    if not on:  # read when huggingface_hub is first imported: set before that
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights", drawn by transformers itself


@contextmanager
def library_call() -> Iterator[None]:
    """Around a library call known to print one of the harmless notices above."""
    if _VERBOSE:
        yield
        return
    deepspeed_log = logging.getLogger("DeepSpeed")  # the logger DeepSpeed creates on import
    drop = _DropMessage(DEEPSPEED_CPU)
    deepspeed_log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=GRADIENT_CHECKPOINTING, category=FutureWarning
            )
            yield
    finally:
        deepspeed_log.removeFilter(drop)
