"""Precision helpers shared by the losses, the log-probs and sampling."""

from __future__ import annotations

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or wider when it already is (a float64 run stays float64).

    Softmax and log-softmax maths on bf16/fp16 logits lose too much; ``.float()`` would
    also silently narrow float64 to float32.
    """
    return x.to(torch.promote_types(x.dtype, torch.float32))
