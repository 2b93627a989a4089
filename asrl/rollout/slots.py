"""The built-in rollout engine: continuous batching over a preallocated KV cache.

The reference loop (``asrl/model/generation.py``) calls the training model once per token
with a cache grown by concatenation, decodes every row until the longest one ends and, under
bf16 autocast, re-casts every fp32 weight at every step. Here:

* **A decode copy** of the model's merged (base + LoRA) weights, once, in the decode dtype
  (bf16 where ``model.autocast`` picks it), fused and packed for the matmul library
  (``decoder.py``, a written-out forward): ``sync`` loads them before each round
  (``perf/weight_sync_s``), as vLLM's colocate mode does. The training model is untouched.
* **Slots.** The KV cache is two tensors (layers, slots, kv heads, positions, head dim)
  allocated once and kept; ``max_batch_tokens`` bounds slots x positions. The active rows
  always fill slots ``[0, n)``, so attention reads a view, never a gathered copy.
* **Continuous batching.** A row that ends frees its slot (the last active row moves into
  it) and a waiting row is prefilled there, so no step decodes padding past a row's end.
  Rows of one prompt that are admitted together share one prefill.
* **Attention** (``_attend``) reads and writes the slot cache. A decode step puts the query
  heads that share a KV head side by side, so grouped-query attention needs no repeated
  keys, and adds one (rows, positions) mask, built once per step, in the same matmul.

Sampling is the reference loop's (``next_token``: exact top-p, transformers' distribution)
from one seeded generator, so a seed and a config reproduce a round.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from asrl.errors import ConfigError
from asrl.model.generation import SAMPLE_ROWS, next_token, sample_workspace
from asrl.model.loading import Policy
from asrl.rollout.decoder import Decoder, unsupported

# architectures whose attention is plain causal softmax attention through transformers'
# interface (no sliding window, no soft-capping, no attention sinks): the slot cache is exact
SUPPORTED = ("llama", "qwen2", "qwen3", "mistral", "smollm3")
DEFAULT_MAX_BATCH_TOKENS = 65_536  # KV-cache positions held at once (rows x positions)
# prompt tokens per prefill forward: one forward of 32 prompts (2,016 tokens) ran its
# elementwise ops 3x slower per element than forwards of a quarter of it (fresh, page-faulted
# activations), at no gain in matmul speed
PREFILL_TOKENS = 512


def supports(policy: Policy) -> str | None:
    """None when the slot engine can decode ``policy``, else the reason it cannot."""
    cfg = policy.model.get_base_model().config
    if policy.sharded:
        return "the model is sharded (FSDP): every process must decode in lockstep"
    if cfg.model_type not in SUPPORTED:
        return f"model type '{cfg.model_type}' is not one of {', '.join(SUPPORTED)}"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "the model uses sliding-window attention"
    return unsupported(cfg)


@dataclass
class _Slots:
    """What attention needs for one forward: the cache and where to write."""

    k: torch.Tensor  # (L, S, Hkv, T, D)
    v: torch.Tensor
    n: int = 0  # active rows, in slots [0, n)
    lens: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (S,)
    prefill_to: torch.Tensor | None = None  # (k,) slots the prefill rows are written to
    bias: torch.Tensor | None = None  # (n * Hkv, 1, T): 0 where written, -inf past a row's end
    scale: float = 1.0


def _attend(st: _Slots, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q (B, T, H, D), k and v (B, T, Hkv, D) -> (B, T, H * D), through the slot cache."""
    B, T, H, D = q.shape
    if st.prefill_to is not None:  # new prompts, right-padded: causal attention is exact
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        st.k[layer, st.prefill_to, :, :T] = kt
        st.v[layer, st.prefill_to, :, :T] = vt
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), kt, vt, is_causal=True, scale=st.scale, enable_gqa=True
        )
        return out.transpose(1, 2).reshape(B, T, H * D)
    n, hkv = B, k.size(2)  # one new token per active row
    rows = torch.arange(n, device=q.device)
    pos = st.lens[:n]
    st.k[layer, rows, :, pos] = k[:, 0]
    st.v[layer, rows, :, pos] = v[:, 0]
    # the whole width of the cache: a view of the first n slots is contiguous, a slice of
    # positions is not and matmul would copy it at every layer
    width = st.k.size(3)
    keys = st.k[layer, :n].view(n * hkv, width, D)
    values = st.v[layer, :n].view(n * hkv, width, D)
    group = q.reshape(n * hkv, H // hkv, D)  # query heads of one KV head as a short "sequence"
    scores = torch.baddbmm(st.bias, group, keys.transpose(1, 2), alpha=st.scale)
    out = torch.bmm(scores.softmax(-1), values)  # (n * Hkv, H / Hkv, D)
    return out.view(n, 1, H * D)


def merged_weights(policy: Policy) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the plain model's parameters and buffers, LoRA merged in, named as
    the base model names them (``model.layers.0.self_attn.q_proj.weight``): TRL's mapping for
    vLLM, ``.base_layer`` dropped and the adapter's own tensors skipped. Call inside
    ``policy.merged()``."""
    base = policy.model.get_base_model()
    for name, t in base.state_dict().items():
        if "lora_" in name or "original_module" in name or "modules_to_save" in name:
            continue
        yield name.replace(".base_layer", ""), t


class SlotEngine:
    """A decode copy of one policy; ``generate`` samples completions with it."""

    name = "asrl"

    def __init__(self, policy: Policy, max_batch_tokens: int | None = None):
        why = supports(policy)
        if why:
            raise ConfigError(f"rollout.engine: asrl cannot decode this model: {why}")
        self.policy = policy
        self.max_batch_tokens = max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS
        self.dtype = policy.autocast_dtype or next(policy.model.parameters()).dtype
        self.decoder = Decoder(policy.model.get_base_model(), self.dtype)
        self.config = self.decoder.config
        self.sync_s = 0.0  # seconds of the last weight sync
        # kept between calls: fresh buffers this size are page-faulted in at every call
        # (zero-filling a 234 MB cache took 0.9 s), reused ones are not
        self._kv = torch.zeros(0, dtype=self.dtype, device=policy.device)
        self._logits = torch.zeros(0, dtype=self.dtype, device=policy.device)
        self._work: torch.Tensor | None = None

    def release(self) -> None:
        """Free the KV cache and sampling buffers kept between calls."""
        self._kv = self._kv.new_zeros(0)
        self._logits = self._logits.new_zeros(0)
        self._work = None

    def _buffer(self, name: str, numel: int) -> torch.Tensor:
        """A flat buffer of at least ``numel`` elements, zero-filled when (re)allocated: the
        cache's masked positions must hold finite values (0 x NaN would poison attention)."""
        buf = getattr(self, name)
        if buf.numel() < numel:
            setattr(self, name, None)  # free the old one first
            buf = torch.zeros(numel, dtype=self.dtype, device=self.policy.device)
            setattr(self, name, buf)
        return buf[:numel]

    def sync(self) -> float:
        """Copy the policy's current merged weights into the decode copy; returns seconds."""
        start = time.perf_counter()
        with torch.no_grad(), self.policy.merged():
            self.decoder.load(merged_weights(self.policy))
        self.sync_s = time.perf_counter() - start
        return self.sync_s

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> list[list[int]]:
        """Completions of ``prompts`` (new ids, cut after the first end-of-turn), as
        ``asrl.model.generation.generate`` returns them; at most ``batch_size`` rows at once."""
        if not prompts or max_new_tokens < 1:
            return [[] for _ in prompts]
        dev, eos = self.policy.device, self.policy.tokenizer.eos_token_id
        width = max(map(len, prompts)) + max_new_tokens
        cap = min(len(prompts), batch_size or len(prompts))
        slots = max(1, min(cap, self.max_batch_tokens // width))
        st = self._slots(slots, width)
        gen = torch.Generator(device=dev).manual_seed(seed)
        row_of = [-1] * slots  # the prompt each slot decodes
        made = torch.zeros(slots, dtype=torch.long, device=dev)  # tokens sampled per slot
        toks = torch.zeros(slots, max_new_tokens, dtype=torch.long, device=dev)
        vocab = self.config.vocab_size
        logits = self._buffer("_logits", slots * vocab).view(slots, vocab)
        if self._work is None or self._work.size(1) < min(slots, SAMPLE_ROWS):
            self._work = sample_workspace(slots, vocab, dev)
        out: list[list[int]] = [[] for _ in prompts]
        waiting = 0  # the next prompt to admit
        while waiting < len(prompts) or st.n:
            left, free = len(prompts) - waiting, slots - st.n
            # admit in batches (one prefill for many rows), not one row per freed slot
            if left and (st.n == 0 or free >= min(left, max(1, slots // 8))):
                take = range(waiting, waiting + min(left, free))
                for j, i in enumerate(take):
                    row_of[st.n + j] = i
                made[st.n : st.n + len(take)] = 0
                self._prefill(st, [prompts[i] for i in take], logits)
                waiting += len(take)
            n = st.n
            rows = torch.arange(n, device=dev)
            nxt = next_token(logits[:n], temperature, top_p, greedy, gen, self._work)
            toks[rows, made[:n]] = nxt
            made[:n] += 1
            ended = (nxt == eos) | (made[:n] >= max_new_tokens)
            if ended.any():
                gone = ended.nonzero().flatten().tolist()
                for r in gone:
                    out[row_of[r]] = toks[r, : int(made[r])].tolist()
                self._compact(st, gone, row_of, made, toks)
            if st.n:
                self._step(st, toks, made, logits)
        return out

    def _slots(self, slots: int, width: int) -> _Slots:
        d = self.decoder
        shape = (len(d.rope), slots, d.kv_heads, width, d.head_dim)
        numel = torch.Size(shape).numel()
        kv = self._buffer("_kv", 2 * numel)
        return _Slots(
            kv[:numel].view(shape),
            kv[numel:].view(shape),
            lens=torch.zeros(slots, dtype=torch.long, device=self.policy.device),
            scale=d.scaling,
        )

    def _forward(self, st: _Slots, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, d) of the decode copy's decoder, attention on the slots."""
        return self.decoder.forward(ids, positions, lambda i, q, k, v: _attend(st, i, q, k, v))

    def _step(self, st: _Slots, toks: torch.Tensor, made: torch.Tensor, logits: torch.Tensor):
        """One token for every active row: feed its last sample, write its logits."""
        n = st.n
        rows = torch.arange(n, device=toks.device)
        width = st.k.size(3)
        hidden = torch.arange(width, device=toks.device) > st.lens[:n, None]  # not yet written
        bias = torch.zeros(n, width, dtype=st.k.dtype, device=toks.device)
        bias.masked_fill_(hidden, float("-inf"))
        st.bias = bias.repeat_interleave(st.k.size(2), 0)[:, None]  # (n * Hkv, 1, T)
        out = self._forward(st, toks[rows, made[:n] - 1][:, None], st.lens[:n, None])
        logits[:n] = self.decoder.head(out[:, -1])
        st.lens[:n] += 1

    def _prefill(self, st: _Slots, new: list[list[int]], logits: torch.Tensor) -> None:
        """Rows ``new`` into slots [n, n + len(new)): each distinct prompt is run once (its
        keys written to its first slot, then copied to the others) and its last logits kept."""
        dev = self.policy.device
        distinct: dict[tuple[int, ...], int] = {}
        src = [distinct.setdefault(tuple(p), len(distinct)) for p in new]
        unique = list(distinct)
        T = max(map(len, unique))
        ids = torch.zeros((len(unique), T), dtype=torch.long, device=dev)  # right-padded
        for i, p in enumerate(unique):
            ids[i, : len(p)] = torch.tensor(p, device=dev)
        lens = torch.tensor([len(p) for p in unique], device=dev)
        first_of: dict[int, int] = {}
        for j, s in enumerate(src):
            first_of.setdefault(s, st.n + j)
        first = torch.tensor([first_of[i] for i in range(len(unique))], device=dev)
        per = max(1, PREFILL_TOKENS // T)  # prompts per forward: bounded activations
        for a in range(0, len(unique), per):
            b = min(a + per, len(unique))
            st.prefill_to = first[a:b]  # each distinct prompt's keys go to its first slot
            try:
                pos = torch.arange(T, device=dev).expand(b - a, T)
                hidden = self._forward(st, ids[a:b], pos)
            finally:
                st.prefill_to = None
            last = hidden[torch.arange(b - a, device=dev), lens[a:b] - 1]
            logits.index_copy_(0, first[a:b], self.decoder.head(last).to(logits.dtype))
        # the other rows of a shared prompt: its keys and logits, copied from its first slot
        # (a run of consecutive rows by broadcasting, no gathered temporary)
        j = 0
        while j < len(new):
            end = j + 1
            while end < len(new) and src[end] == src[j]:
                end += 1
            a, b, f = st.n + j, st.n + end, first_of[src[j]]
            lo = a + 1 if f == a else a  # the first slot already holds it
            if lo < b:
                st.k[:, lo:b, :, :T] = st.k[:, f : f + 1, :, :T]
                st.v[:, lo:b, :, :T] = st.v[:, f : f + 1, :, :T]
                logits[lo:b] = logits[f]
            j = end
        st.lens[st.n : st.n + len(new)] = lens[torch.tensor(src, device=dev)]
        st.n += len(new)

    @staticmethod
    def _compact(st: _Slots, gone: list[int], row_of: list[int], made, toks) -> None:
        """Rows ``gone`` leave; the last active rows move into their slots, so the active
        rows stay in [0, n). Only moved rows are copied."""
        n, ended = st.n, set(gone)
        keep = n - len(ended)
        holes = [r for r in gone if r < keep]
        movers = [r for r in range(keep, n) if r not in ended]
        if holes:
            h = torch.tensor(holes, device=toks.device)
            m = torch.tensor(movers, device=toks.device)
            w = int(st.lens[m].max())
            st.k[:, h, :, :w] = st.k[:, m, :, :w]
            st.v[:, h, :, :w] = st.v[:, m, :, :w]
            st.lens[h], made[h], toks[h] = st.lens[m], made[m], toks[m]
            for a, b in zip(holes, movers):
                row_of[a] = row_of[b]
        st.n = keep
