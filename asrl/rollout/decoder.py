"""The slot engine's decoder: a Llama-family forward written out over plain tensors.

One decode step of SmolLM2-135M through transformers' modules is ~50 tensor operations and
a dozen module calls per layer; at the batch sizes of a CPU round the Python and dispatch
work of those (and seven small matmuls per layer) weighs as much as the arithmetic. Here a
layer is ~20 operations:

* **fused projections**: q, k and v are one matmul, gate and up another, so a layer runs
  four matmuls instead of seven;
* **packed weights**: on a CPU with oneDNN every matmul weight is reordered once per sync
  into oneDNN's blocked layout (``mkldnn._reorder_linear_weight``, what inductor's freezing
  does), so no call repacks it. Measured on an AMD EPYC with AVX512-BF16, SmolLM2's layer
  shapes at 30 rows: bf16 367 -> 480 GFLOP/s, fp32 115 -> 261 GFLOP/s (benchmarks/
  rollout_speed.py has the end-to-end figures). Elsewhere (a GPU, no oneDNN) plain
  ``F.linear`` on the fused weights;
* **one rotary table per step**: cos and sin of the step's positions are computed once by
  the model's own rotary module (so every rope scaling variant is the model's) and used by
  every layer, with q and k rotated in one go.

Attention is the caller's (``attend(layer, q, k, v)``): the slot engine writes k and v into
its cache and attends there. The maths is transformers' for the supported architectures
(Llama, Mistral, Qwen2's q/k/v biases, Qwen3's q/k norms, SmolLM3's layers without rope);
``tests/unit/test_rollout_engines.py`` holds it to the model's forward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _packs(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether oneDNN packed linears run here and agree with ``F.linear`` (probed once)."""
    key = (dtype, device.type)
    if key not in _PACKS:
        ok = device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
        ok = ok and torch.backends.mkldnn.is_available()
        if ok:
            try:
                g = torch.Generator().manual_seed(0)
                w = torch.randn(24, 40, generator=g).to(dtype)
                x = torch.randn(5, 40, generator=g).to(dtype)
                b = torch.randn(24, generator=g).to(dtype)
                packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
                got = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
                ok = torch.allclose(got.float(), F.linear(x, w, b).float(), rtol=2e-2, atol=2e-2)
            except (RuntimeError, AttributeError):
                ok = False
        _PACKS[key] = ok
    return _PACKS[key]


_PACKS: dict[tuple[torch.dtype, str], bool] = {}


class Linear:
    """y = x W^T + b over a weight fixed until the next sync, packed for oneDNN where it can."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.out_features = weight.size(0)
        self.bias = bias.contiguous() if bias is not None else None
        self.packed = _packs(weight.dtype, weight.device)
        w = weight.contiguous()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(w, None) if self.packed else w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@dataclass
class Layer:
    ln1: torch.Tensor
    qkv: Linear
    o: Linear
    ln2: torch.Tensor
    gate_up: Linear
    down: Linear
    q_norm: torch.Tensor | None  # Qwen3: RMSNorm over each head's q and k, before rope
    k_norm: torch.Tensor | None
    rope: bool  # SmolLM3 leaves rope out of some layers


SILU = ("silu", "swish")


def unsupported(config) -> str | None:
    """None when this decoder computes the model's forward, else why it does not."""
    if getattr(config, "hidden_act", "silu") not in SILU:
        return f"activation '{config.hidden_act}' (the decoder's MLP is SiLU-gated)"
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    return None


class Decoder:
    """Weights of one model, loaded by ``load`` from its (merged) state dict, and its forward."""

    def __init__(self, base, dtype: torch.dtype):
        c = base.config
        self.config = c
        self.dtype = dtype
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.eps = c.rms_norm_eps
        attn = base.get_decoder().layers[0].self_attn
        self.scaling = getattr(attn, "scaling", self.head_dim**-0.5)
        no_rope = getattr(c, "no_rope_layers", None)  # SmolLM3: 1 = this layer uses rope
        self.rope = [bool(no_rope[i]) if no_rope else True for i in range(c.num_hidden_layers)]
        # the model's own rotary module (buffers in the dtype the training model keeps them:
        # angles in bf16 would drift from its positions)
        self.rotary = copy.deepcopy(base.get_decoder().rotary_emb)
        self.layers: list[Layer] = []
        self.embed = self.norm = torch.empty(0)
        self.head: Linear | None = None

    def names(self) -> set[str]:
        """The state-dict entries ``load`` needs."""
        need = {"model.embed_tokens.weight", "model.norm.weight"}
        for i in range(self.config.num_hidden_layers):
            p = f"model.layers.{i}."
            need |= {
                p + n + ".weight" for n in _PROJ + ("input_layernorm", "post_attention_layernorm")
            }
        return need

    def load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Build the layers from (name, tensor) pairs named as the base model's state dict."""
        w = {n: t for n, t in weights}
        missing = self.names() - set(w)
        if missing:
            raise RuntimeError(f"decode copy: no weights for {sorted(missing)[:3]}")

        def get(name: str) -> torch.Tensor | None:
            t = w.get(name)
            return None if t is None else t.detach().to(self.dtype)

        def fused(p: str, parts: tuple[str, ...]) -> Linear:
            ws = [get(f"{p}{n}.weight") for n in parts]
            bs = [get(f"{p}{n}.bias") for n in parts]  # Qwen2: q, k, v biased, o not
            b = None
            if any(x is not None for x in bs):
                b = torch.cat([x if x is not None else w.new_zeros(len(w)) for w, x in zip(ws, bs)])
            return Linear(torch.cat(ws), b)

        self.layers = []
        for i in range(self.config.num_hidden_layers):
            p = f"model.layers.{i}."
            self.layers.append(
                Layer(
                    ln1=get(p + "input_layernorm.weight"),
                    qkv=fused(p, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                    o=fused(p, ("self_attn.o_proj",)),
                    ln2=get(p + "post_attention_layernorm.weight"),
                    gate_up=fused(p, ("mlp.gate_proj", "mlp.up_proj")),
                    down=fused(p, ("mlp.down_proj",)),
                    q_norm=get(p + "self_attn.q_norm.weight"),
                    k_norm=get(p + "self_attn.k_norm.weight"),
                    rope=self.rope[i],
                )
            )
        self.embed = get("model.embed_tokens.weight")
        self.norm = get("model.norm.weight")
        head = get("lm_head.weight")
        self.head = Linear(head if head is not None else self.embed, get("lm_head.bias"))

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), weight, self.eps)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Final hidden states (B, T, d) of ``ids`` (B, T) at ``positions`` (B, T).

        ``attend(layer, q, k, v)``: q (B, T, H, D), k and v (B, T, Hkv, D) after rope;
        returns the attention output (B, T, H * D)."""
        h = F.embedding(ids, self.embed)
        cos, sin = self.rotary(h, positions)  # (B, T, D), once for every layer
        cos, sin = cos.to(h.dtype)[:, :, None], sin.to(h.dtype)[:, :, None]
        B, T = ids.shape
        H, Hkv, D = self.heads, self.kv_heads, self.head_dim
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(self._rms(h, layer.ln1))
            qk = qkv[..., : (H + Hkv) * D].view(B, T, H + Hkv, D)
            v = qkv[..., (H + Hkv) * D :].view(B, T, Hkv, D)
            if layer.q_norm is not None:
                qk = torch.cat([self._rms(qk[:, :, :H], layer.q_norm),
                                self._rms(qk[:, :, H:], layer.k_norm)], 2)  # fmt: skip
            if layer.rope:
                half = D // 2
                rotated = torch.cat([-qk[..., half:], qk[..., :half]], -1)
                qk = torch.addcmul(qk * cos, rotated, sin)
            h = h + layer.o(attend(i, qk[:, :, :H], qk[:, :, H:], v))
            gu = layer.gate_up(self._rms(h, layer.ln2))
            g, u = gu.chunk(2, -1)
            h = h + layer.down(F.silu(g).mul_(u))
        return self._rms(h, self.norm)


_PROJ = tuple(
    f"self_attn.{n}_proj" for n in "qkvo"
) + tuple(f"mlp.{n}_proj" for n in ("gate", "up", "down"))  # fmt: skip
