"""Which compute paths pay on this machine? Side by side, in one run, on the embedded model.

    .venv/bin/python benchmarks/cpu_paths.py [--model smollm2-135m] [--repeats 3]

Prints: matmul GFLOP/s fp32 vs bf16; an SFT training step (batch 8, LoRA r=32) fp32 vs bf16
autocast, full-vocab logits vs logits at response positions only; batched generation
(24 prompts x 48 new tokens) with the LoRA unmerged vs merged, fp32 vs bf16 autocast.
Readings alternate A/B within each repeat and the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from asrl.config import ModelConfig
from asrl.data.records import parse_record
from asrl.data.render import collate, prompt_ids, tokenize_all
from asrl.data.synthetic import generate_records
from asrl.model.generation import generate
from asrl.model.loading import Policy, load_policy
from asrl.phases.sft import _forward_loss, sft_loss


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rates(repeats: int) -> dict[str, float]:
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        a, b = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
        a @ b
        s = median_time(lambda a=a, b=b: a @ b, repeats * 2)
        out[str(dt).removeprefix("torch.")] = 2 * 2048**3 / s / 1e9
    return out


def train_step(policy: Policy, batch: dict, fast: bool) -> None:
    n = int((batch["labels"][:, 1:] != -100).sum())
    if fast:
        loss = _forward_loss(policy, batch, n)
    else:
        with policy.autocast():
            logits = policy.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        loss = sft_loss(logits, batch["labels"], n)
    loss.backward()
    policy.model.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for k, v in matmul_rates(args.repeats).items():
        print(f"matmul 2048^3 {k:9s} {v:8.0f} GFLOP/s")

    policy = load_policy(ModelConfig(name=args.model, autocast="none"))
    examples = [parse_record(r) for r in generate_records(64, seed=3)]
    data, _ = tokenize_all(policy.tokenizer, examples, 512)
    batch = collate(data[:8], policy.tokenizer.pad_token_id)
    tokens = int(batch["attention_mask"].sum())
    policy.model.train()
    rows = {}
    for _ in range(args.repeats):  # alternate the variants inside each repeat
        for name, dt, fast in [
            ("fp32, full logits", None, False),
            ("fp32, response logits", None, True),
            ("bf16 autocast, full logits", torch.bfloat16, False),
            ("bf16 autocast, response logits", torch.bfloat16, True),
        ]:
            policy.autocast_dtype = dt
            t = time.perf_counter()
            train_step(policy, batch, fast)
            rows.setdefault(name, []).append(time.perf_counter() - t)
    for name, ts in rows.items():
        print(f"SFT step b=8 ({tokens} tok) {name:32s} {tokens / statistics.median(ts):7.0f} tok/s")

    prompts = [prompt_ids(policy.tokenizer, e) for e in examples[:24]]
    for p in policy.trainable_parameters():  # a non-zero adapter, as after training
        if p.dim() == 2 and p.shape[0] > p.shape[1]:
            torch.nn.init.normal_(p, std=0.01)
    gen_rows = {}
    for _ in range(max(1, args.repeats - 1)):
        for name, dt, merged in [
            ("fp32, unmerged", None, False),
            ("fp32, merged", None, True),
            ("bf16 autocast, merged", torch.bfloat16, True),
        ]:
            policy.autocast_dtype = dt
            policy.merge_for_generation = merged
            t = time.perf_counter()
            out = generate(policy, prompts, max_new_tokens=48, temperature=0.7, seed=0)
            gen_rows.setdefault(name, []).append(
                (sum(len(o) for o in out), time.perf_counter() - t)
            )
    for name, rs in gen_rows.items():
        n, s = rs[len(rs) // 2]
        print(f"generate 24 x 48 {name:24s} {24 * 48 / s:7.0f} slots/s ({n / s:5.0f} real tok/s)")


if __name__ == "__main__":
    main()
