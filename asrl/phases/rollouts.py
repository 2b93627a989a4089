"""Rollouts: sample a group of completions per prompt, score them, and the bookkeeping on
groups (gather across processes, concatenate, keep the informative ones, log a few)."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from asrl.config import GRPOConfig
from asrl.data.render import prompt_ids
from asrl.model.loading import Policy
from asrl.parallel import distributed
from asrl.rewards.builtin import RewardSet
from asrl.rollout import generate
from asrl.types import Example, Rollout


def truncated(completion_ids: Sequence[Sequence[int]], stop_ids: Collection[int]) -> list[bool]:
    """Completions that hit max_new_tokens: the last token is no end-of-sequence or padding
    token (TRL's ``is_truncated``, trl/trainer/grpo_trainer.py). An empty one is not."""
    return [bool(c) and c[-1] not in stop_ids for c in completion_ids]


@dataclass
class _Batch:
    """Prompt left-padded + completion right-padded, ready for one forward. Rows: completions."""

    input_ids: torch.Tensor  # (B, P + C)
    attention_mask: torch.Tensor  # (B, P + C)
    completion_mask: torch.Tensor  # (B, C)


def _pack(prompts: list[list[int]], completions: list[list[int]], pad: int) -> _Batch:
    P = max(len(p) for p in prompts)
    C = max(max((len(c) for c in completions), default=1), 1)
    B = len(prompts)
    ids = torch.full((B, P + C), pad, dtype=torch.long)
    attn = torch.zeros((B, P + C), dtype=torch.long)
    cmask = torch.zeros((B, C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p) : P] = torch.tensor(p)
        attn[i, P - len(p) : P] = 1
        if c:
            ids[i, P : P + len(c)] = torch.tensor(c)
            attn[i, P : P + len(c)] = 1
            cmask[i, : len(c)] = 1
    return _Batch(ids, attn, cmask)


def rollout(
    policy: Policy,
    examples: list[Example],
    cfg: GRPOConfig,
    rewards: RewardSet,
    seed: int,
    system_prompt: str | None = None,
) -> Rollout:
    """Sample ``num_generations`` completions per example (all groups in one batch) and score."""
    start = time.perf_counter()
    G = cfg.num_generations
    if not examples:  # a process with no share of this round's questions
        if policy.sharded:  # it still takes part in every decoding step
            generate(policy, [], cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=seed)
        return Rollout([], [], [], [], [], {part.name: [] for part in rewards.parts})
    expanded = [ex for ex in examples for _ in range(G)]  # group by group
    p_ids = [prompt_ids(policy.tokenizer, ex, system_prompt) for ex in expanded]
    c_ids = generate(
        policy,
        p_ids,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=seed,
    )
    texts = policy.tokenizer.batch_decode(c_ids, skip_special_tokens=True)
    totals, components = rewards.score(expanded, texts)
    return Rollout(
        expanded,
        texts,
        p_ids,
        c_ids,
        totals,
        components,
        tokens_generated=sum(len(c) for c in c_ids),
        seconds=time.perf_counter() - start,
        sync_seconds=policy.engine.sync_s if policy.engine is not None else 0.0,
    )


def gather_rollout(d: distributed.Dist, ro: Rollout, group_size: int) -> Rollout:
    """Every process's groups, back in question order (the inverse of ``d.shard``)."""
    if not d.active:
        return ro
    fields = ("examples", "completions", "prompt_ids", "completion_ids", "rewards")
    mine = {f: _groups(getattr(ro, f), group_size) for f in fields}
    mine["components"] = {k: _groups(v, group_size) for k, v in ro.components.items()}
    mine["stats"] = (ro.tokens_generated, ro.seconds, ro.sync_seconds)
    shares = d.gather(mine)
    merged = {f: _flat(d.unshard([s[f] for s in shares])) for f in fields}
    components = {k: _flat(d.unshard([s["components"][k] for s in shares])) for k in ro.components}
    return Rollout(
        **merged,
        components=components,
        tokens_generated=sum(s["stats"][0] for s in shares),
        seconds=max(s["stats"][1] for s in shares),
        sync_seconds=max(s["stats"][2] for s in shares),
    )


def _groups(rows: list, size: int) -> list[list]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _flat(groups: list[list]) -> list:
    return [x for g in groups for x in g]


def concat_rollouts(ros: Sequence[Rollout]) -> Rollout:
    """Several rollouts as one, in order (token counts and seconds add up)."""
    names = list(ros[0].components) if ros else []
    return Rollout(
        [x for r in ros for x in r.examples],
        [x for r in ros for x in r.completions],
        [x for r in ros for x in r.prompt_ids],
        [x for r in ros for x in r.completion_ids],
        [x for r in ros for x in r.rewards],
        {k: [x for r in ros for x in r.components[k]] for k in names},
        tokens_generated=sum(r.tokens_generated for r in ros),
        seconds=sum(r.seconds for r in ros),
        sync_seconds=sum(r.sync_seconds for r in ros),
    )


def select_groups(ro: Rollout, keep: Sequence[bool], group_size: int) -> Rollout:
    """The groups of ``ro`` where ``keep`` (one flag per group) is true, in order.

    ``tokens_generated`` and ``seconds`` stay those of the whole rollout (what it cost)."""
    rows = [i for g, k in enumerate(keep) if k for i in range(g * group_size, (g + 1) * group_size)]
    return Rollout(
        [ro.examples[i] for i in rows],
        [ro.completions[i] for i in rows],
        [ro.prompt_ids[i] for i in rows],
        [ro.completion_ids[i] for i in rows],
        [ro.rewards[i] for i in rows],
        {k: [v[i] for i in rows] for k, v in ro.components.items()},
        tokens_generated=ro.tokens_generated,
        sync_seconds=ro.sync_seconds,
        seconds=ro.seconds,
    )


def rollout_samples(
    ro: Rollout, advantages: torch.Tensor, group_size: int, n: int
) -> list[dict[str, Any]]:
    """The round's first ``n`` completions, for a human to read. Rollouts are laid out group
    by group, so completions of one prompt sit side by side with the rewards and advantages
    that rank them. ``rewards``: each reward function's unweighted value (None: no opinion)."""
    return [
        {
            "id": ro.examples[i].id,
            "type": ro.examples[i].type,
            "group": i // group_size,
            "prompt": ro.examples[i].prompt_text,
            "reference": ro.examples[i].response,
            "output": ro.completions[i],
            "reward": ro.rewards[i],
            "rewards": {name: values[i] for name, values in ro.components.items()},
            "advantage": float(advantages[i]),
        }
        for i in range(min(n, len(ro.completions)))
    ]
