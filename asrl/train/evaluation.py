"""Held-out evaluation: format accuracy, correctness, validation loss (greedy decoding, or
``eval.samples_per_example`` sampled completions per example at ``eval.temperature`` > 0).

* ``eval/format_accuracy`` — the paper's check (every section tag opened and closed) over the
  held-out examples whose reference uses the thinking format;
* ``eval/format_compliance`` — right format for every example (thinking where the reference
  thinks, none where it answers directly);
* ``eval/correctness`` — fraction whose final answer gets full marks from the correctness
  reward (an exact match; with ``reward.correctness: math_verify`` an equal value; for
  reasoning-gym records the task scorer's 1.0); ``eval/correctness/<type>`` the same per
  record type;
* ``eval/reward_mean`` — the training reward on greedy outputs; ``eval/val_loss`` —
  response-token cross-entropy of the references.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from asrl.config import EvalConfig
from asrl.data.format import ThinkingFormat
from asrl.data.render import prompt_ids, tokenize_all
from asrl.model.loading import Policy
from asrl.parallel import distributed
from asrl.phases.sft import validation_loss
from asrl.rewards.builtin import RewardSet, format_ok, make_correctness_reward
from asrl.rollout import generate
from asrl.types import Example

SAMPLING_SEED = 1234  # eval.temperature > 0: every evaluation draws the same random stream


def eval_examples(examples: list[Example], cfg: EvalConfig) -> list[Example]:
    """Up to ``max_examples`` held-out records, shared out across record types.

    Types take turns (in order of first appearance), each contributing its records in
    arrival order. So a type's selection is a stable prefix of its records as the split
    grows, and a pattern that arrives mid-run (the paper's injected style) is evaluated
    from the first epoch it has held-out records, instead of queueing behind old ones.
    """
    by_type: dict[str, list[Example]] = {}
    for ex in examples:
        by_type.setdefault(ex.type, []).append(ex)
    queues = list(by_type.values())
    chosen: list[Example] = []
    depth = 0
    while len(chosen) < cfg.max_examples and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < cfg.max_examples:
                chosen.append(q[depth])
        depth += 1
    return chosen


def evaluate(
    policy: Policy,
    examples: list[Example],
    fmt: ThinkingFormat,
    rewards: RewardSet,
    cfg: EvalConfig,
    max_length: int,
    system_prompt: str | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics, and every (prompt, reference, output) for a human to read."""
    start = time.perf_counter()
    examples = eval_examples(examples, cfg)
    if not examples:
        return {}, []
    tok = policy.tokenizer
    d = distributed.current()  # several processes: each decodes its share, then all gather
    k = cfg.samples_per_example if cfg.temperature > 0 else 1  # completions per example
    mine = [ex for ex in d.shard(examples) for _ in range(k)]
    c_ids: list[list[int]] = []
    if mine or policy.sharded:  # sharded: every process decodes, with or without a share
        p_ids = [prompt_ids(tok, ex, system_prompt) for ex in mine]
        c_ids = generate(
            policy,
            p_ids,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature or 1.0,
            top_p=cfg.top_p,
            greedy=cfg.temperature == 0,
            seed=SAMPLING_SEED + d.rank,
            batch_size=cfg.batch_size,
        )
    texts = tok.batch_decode(c_ids, skip_special_tokens=True)
    scored, components = rewards.score(mine, texts) if mine else ([], {})
    correctness = rewards.correctness or make_correctness_reward(fmt)
    marks = (
        correctness(
            prompts=[ex.prompt_text for ex in mine], completions=texts, **rewards.columns(mine)
        )
        if mine
        else []
    )
    names = [part.name for part in rewards.parts]
    rows = [
        (len(c), text, r, m, [components.get(n, [None] * len(mine))[i] for n in names])
        for i, (c, text, r, m) in enumerate(zip(c_ids, texts, scored, marks))
    ]
    per_example = [rows[i : i + k] for i in range(0, len(rows), k)]  # an example's k outputs
    rows = [r for group in d.unshard(d.gather(per_example)) for r in group]  # all, in order
    outputs_of = [ex for ex in examples for _ in range(k)]  # the example of each output
    lengths, texts = [r[0] for r in rows], [r[1] for r in rows]
    scored, marks = [r[2] for r in rows], [r[3] for r in rows]
    components = {n: [r[4][j] for r in rows] for j, n in enumerate(names)}

    thinking_ok, compliant, exact = [], [], []
    by_type: dict[str, list[float]] = defaultdict(list)
    for ex, text, mark in zip(outputs_of, texts, marks):
        if fmt.has_thinking(ex.response):
            thinking_ok.append(fmt.is_well_formed(text))
        compliant.append(format_ok(text, ex.response, fmt))
        hit = mark == 1.0
        exact.append(hit)
        by_type[ex.type].append(float(hit))

    tokenized, _ = tokenize_all(tok, examples, max_length, system_prompt)
    metrics = {
        "eval/format_accuracy": _mean(thinking_ok),
        "eval/format_compliance": _mean(compliant),
        "eval/correctness": _mean(exact),
        "eval/reward_mean": _mean(scored),
        "eval/val_loss": validation_loss(policy, tokenized),
        "eval/n": float(len(examples)),
        "eval/completion_len": sum(lengths) / len(lengths),
    }
    for t, hits in sorted(by_type.items()):
        metrics[f"eval/correctness/{t}"] = _mean(hits)
    metrics["time/eval_s"] = time.perf_counter() - start
    samples = [
        {
            "id": ex.id,
            "type": ex.type,
            "prompt": ex.prompt_text,
            "reference": ex.response,
            "output": text,
            "reward": scored[i],
            "rewards": {name: values[i] for name, values in components.items()},
        }
        for i, (ex, text) in enumerate(zip(outputs_of, texts))
    ]
    return metrics, samples


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")
