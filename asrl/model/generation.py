"""Rollout backend: a KV-cached decoding loop with the LoRA merged in.

Why not ``model.generate``: a GRPO round samples G completions of each prompt, and on a CPU
two things dominated transformers' generate there (measured, docs/PERFORMANCE.md):

* the prefill ran every prompt G times: here each distinct prompt is prefilled once and its
  KV cache copied to its G rows;
* top-p sorted the whole vocabulary for every row at every step, and multinomial sampled
  over all of it: here ``sample_top_p`` finds the nucleus among the top 64 tokens, then
  the top 1024 (exact: it falls back to a full sort for a row whose top 1024 hold less than
  ``top_p``), and samples within it. The distribution is
  transformers' (TopPLogitsWarper), tested.

This loop is the ``hf`` rollout engine: the one a sharded (FSDP) model uses, and the
reference the faster built-in engine (``asrl/rollout/slots.py``) is tested against.

Merged weights make every decoding step one matmul per projection instead of three (base,
A, B). Sampling is seeded, so runs reproduce.
"""

from __future__ import annotations

import torch

from asrl.errors import TrainingDiverged
from asrl.model.cache import cache_kwargs, kv_cache
from asrl.model.loading import Policy
from asrl.parallel import distributed

# the nucleus is looked for among the top FIRST tokens, then the top WIDTH, then the whole
# vocabulary. The draw is always over WIDTH candidates (a row found in the first FIRST has
# zeros after them), so the random stream, and every sample, is the same as a WIDTH-only
# search's: an earlier search that drew over FIRST candidates sampled the same distribution
# (chi-square tested) yet turned GRPO on a dense reward around in tests/integration/
# test_grpo_signal.py (reward gain +0.21..+0.37 over 7 seeds against -0.36..+0.26 over 7;
# unexplained, docs/rollout_speed.md), so the stream is kept
FIRST, WIDTH = 64, 1024
SAMPLE_ROWS = 64  # rows sampled at once (see next_token)


def top_p_keep(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (B, V) of the tokens transformers' TopPLogitsWarper keeps (reference version).

    A token is kept when the probability mass strictly above it (in descending order) is
    below ``top_p``; the most likely token is always kept.
    """
    sorted_scores, order = torch.sort(scores, descending=True)
    probs = sorted_scores.softmax(-1)
    above = probs.cumsum(-1) - probs  # mass strictly above each token
    keep_sorted = above < top_p
    keep_sorted[:, 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def sample_top_p(
    scores: torch.Tensor,
    top_p: float,
    generator: torch.Generator | None = None,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row from softmax(scores) restricted to the top-p nucleus. (B, V) -> (B,).

    ``lse``: the rows' logsumexp (B, 1) when the caller has it.
    """
    if top_p >= 1.0:
        return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(-1)
    if lse is None:
        lse = scores.logsumexp(-1, keepdim=True)
    width = min(WIDTH, scores.size(-1))
    b = scores.size(0)
    weights = scores.new_zeros(b, width)  # the nucleus's probabilities, zero elsewhere
    cand = torch.zeros(b, width, dtype=torch.long, device=scores.device)
    covered = torch.zeros(b, dtype=torch.bool, device=scores.device)
    rows = None  # rows searched at this width (None: all)
    for k in (min(FIRST, width), width):
        sub = scores if rows is None else scores[rows]
        top, idx = sub.topk(k, dim=-1)  # (r, k), descending
        probs = (top - (lse if rows is None else lse[rows])).exp()  # true probabilities
        keep = probs.cumsum(-1) - probs < top_p  # mass strictly above each token < top_p
        keep[:, 0] = True
        found = probs.sum(-1) >= top_p  # the nucleus lies inside the top k
        at = torch.arange(b, device=scores.device) if rows is None else rows
        weights[at, :k] = torch.where(keep, probs, torch.zeros_like(probs))
        cand[at, :k] = idx
        covered[at] = found
        rows = at[~found]
        if not len(rows) or k == width:
            break
    out = torch.empty(b, dtype=torch.long, device=scores.device)
    if covered.any():
        pick = torch.multinomial(weights[covered], 1, generator=generator)
        out[covered] = cand[covered].gather(-1, pick).squeeze(-1)
    if not covered.all():  # a flat distribution: the exact, slow way for those rows
        rest = scores[~covered]
        masked = rest.masked_fill(~top_p_keep(rest, top_p), float("-inf"))
        out[~covered] = torch.multinomial(masked.softmax(-1), 1, generator=generator).squeeze(-1)
    return out


def generate(
    policy: Policy,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Complete each prompt; returns the new token ids, cut after the first end-of-turn.

    The end-of-turn token is kept (the policy is trained to emit it); a completion that hit
    ``max_new_tokens`` has none. Rows with the same prompt share one prefill.

    Sharded (FSDP), every process must call this, each with its own prompts (maybe none):
    they decode the same number of batches and steps, each until every process is done.
    """
    d = distributed.current() if policy.sharded else distributed.Dist()
    batch_size = batch_size or max(len(prompts), 1)
    chunks = d.padded_chunks(prompts, batch_size)  # sharded: as many on every process
    out: list[list[int]] = []
    if not chunks:
        return out
    was_training = policy.model.training
    policy.model.eval()
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    with policy.no_grad(), policy.merged(), policy.autocast():
        for chunk in chunks:
            out += _decode(policy, chunk, max_new_tokens, temperature, top_p, greedy, gen, d)
    policy.model.train(was_training)
    return out


def _decode(
    policy: Policy,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool,
    gen: torch.Generator,
    d: distributed.Dist,
) -> list[list[int]]:
    """One batch. Sharded, ``d`` keeps the processes in step: a process with no prompts
    decodes a dummy row, and one whose rows are all done feeds padding (no sampling, so its
    random stream is what one process would use) until every process is done."""
    tok, model, dev = policy.tokenizer, policy.model, policy.device
    eos, pad = tok.eos_token_id, tok.pad_token_id
    dummy = not prompts
    prompts = prompts or [[pad]]
    distinct: dict[tuple[int, ...], int] = {}
    rows = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts])
    unique = list(distinct)
    width = max(len(p) for p in unique)
    ids = torch.full((len(unique), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(unique):  # left padding: every row ends at the same place
        ids[i, width - len(p) :] = torch.tensor(p)
        attn[i, width - len(p) :] = 1
    ids, attn, rows = ids.to(dev), attn.to(dev), rows.to(dev)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    res = model(
        input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1
    )
    cache = kv_cache(res)
    if len(unique) < len(prompts):
        cache.batch_select_indices(rows)  # each row its own copy of its prompt's cache
    logits, attn, last = res.logits[rows, -1], attn[rows], pos[rows, -1]
    done = torch.full((len(prompts),), dummy, dtype=torch.bool, device=dev)
    steps: list[torch.Tensor] = []
    for t in range(max_new_tokens):
        if done.all():  # only sharded: waiting for the other processes, in step with them
            nxt = torch.full_like(done, pad, dtype=torch.long)
        else:
            nxt = next_token(logits, temperature, top_p, greedy, gen)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            steps.append(nxt)
            done |= nxt == eos
        if d.all_done(bool(done.all())) or t + 1 == max_new_tokens:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        last = last + 1
        res = model(
            input_ids=nxt[:, None],
            attention_mask=attn,
            position_ids=last[:, None],
            cache_position=torch.tensor([width + t], device=dev),
            use_cache=True,
            **cache_kwargs(model, cache),
        )
        cache, logits = kv_cache(res), res.logits[:, -1]
    if dummy:
        return []
    out = []
    for row in torch.stack(steps, dim=1).tolist() if steps else [[] for _ in prompts]:
        if eos in row:
            row = row[: row.index(eos) + 1]
        out.append(row)
    return out


def next_token(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    greedy: bool,
    gen: torch.Generator,
    work: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token of each row from the last position's logits. (B, V) -> (B,).

    Sampled in blocks of SAMPLE_ROWS rows, in ``work`` (2, SAMPLE_ROWS, V) when given (see
    ``sample_workspace``): fresh (rows, vocab) fp32 temporaries at every step are page-faulted
    in anew (a (256, 49k) one ran elementwise ops ~20x slower per element than a reused one).
    """
    if greedy:
        return logits.argmax(-1)
    if work is None:
        work = sample_workspace(min(logits.size(0), SAMPLE_ROWS), logits.size(-1), logits.device)
    out = torch.empty(logits.size(0), dtype=torch.long, device=logits.device)
    for i in range(0, logits.size(0), SAMPLE_ROWS):
        block = logits[i : i + SAMPLE_ROWS]
        scores = work[0, : block.size(0)].copy_(block).div_(temperature)  # fp32
        top = scores.amax(-1, keepdim=True)
        total = torch.sub(scores, top, out=work[1, : block.size(0)]).exp_().sum(-1, keepdim=True)
        lse = top + total.log()
        if not torch.isfinite(lse).all():  # a NaN or inf logit makes its row's lse one too
            raise TrainingDiverged(
                "generation: the model's next-token probabilities are NaN/inf (the "
                "weights have diverged); try a lower learning rate"
            )
        out[i : i + SAMPLE_ROWS] = sample_top_p(scores, top_p, gen, lse)
    return out


def sample_workspace(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """The buffers ``next_token`` samples in, to keep between steps: (2, rows, vocab) fp32."""
    return torch.empty(2, min(rows, SAMPLE_ROWS), vocab, device=device)
