"""Rollout backend: batched transformers ``generate`` with the LoRA merged in.

Merged weights make every decoding step one matmul per projection instead of three (base,
A, B); measured faster on CPU. Sampling is seeded from (seed, epoch, step), so runs reproduce.
"""

from __future__ import annotations

import torch

from asrl.models import Policy
from asrl.phases.common import TrainingDiverged


@torch.inference_mode()
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
    ``max_new_tokens`` has none.
    """
    tok = policy.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    batch_size = batch_size or len(prompts)
    out: list[list[int]] = []
    was_training = policy.model.training
    policy.model.eval()
    with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
        torch.manual_seed(seed)
        with policy.merged(), policy.autocast():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start : start + batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                attn = torch.zeros_like(ids)
                for i, p in enumerate(chunk):  # left padding: every row ends at the same place
                    ids[i, width - len(p) :] = torch.tensor(p)
                    attn[i, width - len(p) :] = 1
                sampling = (
                    {"do_sample": False}
                    if greedy
                    else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
                )
                try:
                    seqs = policy.model.generate(
                        input_ids=ids.to(policy.device),
                        attention_mask=attn.to(policy.device),
                        max_new_tokens=max_new_tokens,
                        pad_token_id=pad,
                        eos_token_id=eos,
                        **sampling,
                    )
                except RuntimeError as e:
                    # torch.multinomial's complaint when the weights have gone NaN/inf: say
                    # what it means instead of a sampling internals traceback
                    if "probability tensor contains" not in str(e):
                        raise
                    raise TrainingDiverged(
                        "generation: the model's next-token probabilities are NaN/inf (the "
                        "weights have diverged); try a lower learning rate"
                    ) from e
                for row in seqs[:, width:].tolist():
                    if eos in row:
                        row = row[: row.index(eos) + 1]
                    out.append(row)
    policy.model.train(was_training)
    return out
