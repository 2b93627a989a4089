"""PEFT LoRA linears with the adapter's product folded into one fused matmul-add.

PEFT computes ``base(x) + B(A(dropout(x))) * scaling`` as four ops, and the last two (a
multiply and an add over the whole (tokens, out) output) run 7 times per decoder layer,
forward and backward. With no dropout (asrl's default) the same value is
``addmm(base(x), A(x), (scaling * B).T)``: the scale goes onto the small (out, r) matrix and
the add into the matmul's accumulator. Measured on the 2-core CPU: SFT ~3% faster
(docs/PERFORMANCE.md). Anything else (dropout, DoRA and other variants, several adapters,
merged or disabled adapters, mixed-adapter batches) takes PEFT's own forward unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA ``Linear`` with the plain-LoRA training forward fused (same parameters)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        name = self._plain_adapter() if not (args or kwargs) else None
        if name is None:
            return super().forward(x, *args, **kwargs)
        out = self.base_layer(x)
        a, b = self.lora_A[name].weight, self.lora_B[name].weight  # (r, in), (out, r)
        h = F.linear(self._cast_input_dtype(x, a.dtype), a)  # (..., r), as PEFT casts
        fused = torch.addmm(
            out.reshape(-1, out.shape[-1]),
            h.reshape(-1, h.shape[-1]),
            (b * self.scaling[name]).t(),
        )
        return fused.view(out.shape).to(out.dtype)

    def _plain_adapter(self) -> str | None:
        """The single active adapter's name if it is plain, unmerged LoRA without dropout."""
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if (
            name not in self.lora_A
            or name in self.lora_variant
            or not isinstance(self.lora_dropout[name], torch.nn.Identity)
            or self.lora_B[name].bias is not None
        ):
            return None
        return name


def fuse_lora(model: torch.nn.Module) -> int:
    """Switch every PEFT LoRA ``Linear`` in ``model`` to :class:`FusedLoraLinear`, in place.

    Only the class changes (parameters, state dict, merging and saving are PEFT's). Returns
    how many modules were switched.
    """
    n = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
            n += 1
    return n
