"""asrl vs TRL on identical work, on the embedded model, in one run.

    .venv/bin/python benchmarks/vs_trl.py [--model smollm2-135m] [--repeats 1] [--sft-repeats 2]
        [--precision auto|bf16|fp32] [--sft-examples 64] [--questions 8] [--generations 6]
        [--new-tokens 64] [--trl-defaults]

Both sides: the same base weights, LoRA r=32 alpha=64 on all seven projections, no dropout.
SFT: the same tokenized examples (prompt masked), batch 8, one pass -> real tokens/s.
GRPO: one round of ``questions`` prompts x ``generations`` completions x ``new-tokens``,
one optimizer step over all of them (TRL: GRPOTrainer max_steps=1, generation batch
questions*generations, 8 completions per forward; asrl: run_grpo_phase steps_per_round=1,
micro_batch_size 8) -> seconds. Each reading runs in a fresh child process (so peak RSS is
that framework's alone); A/B alternate within each repeat and medians are reported.
SFT throughput is also shown as a fraction of the LoRA FLOP limit: 4*N FLOPs per token
(forward 2N + activation gradients 2N, no weight gradients for the frozen base; N = base
parameters), at the faster of the fp32 / bf16 matmul rates measured in the same run.
``--trl-defaults`` adds a third reading per repeat: TRL as a user gets it without setting a
precision (SFTConfig/GRPOConfig default ``bf16=True``: bf16 autocast on a CPU that has bf16),
beside the equal-precision comparison.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import torch
from _common import TARGETS, load_base, print_result, resolve_precision, run_child, trl_common_args


def matmul_rates(repeats: int = 3) -> dict[str, float]:
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        a, b = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
        a @ b
        times = []
        for _ in range(repeats * 2):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        out[str(dt).removeprefix("torch.")] = 2 * 2048**3 / statistics.median(times) / 1e9
    return out


def _examples(n: int, seed: int):
    from asrl.data.records import parse_record
    from asrl.data.synthetic import generate_records

    return [parse_record(r) for r in generate_records(n, seed=seed)]


# ----------------------------------------------------------------------------- workers


def _asrl_policy(a):
    from asrl.config import ModelConfig
    from asrl.model.loading import load_policy

    return load_policy(
        ModelConfig(name=a.model, autocast="bf16" if a.precision == "bf16" else "none")
    )


def _base_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)


def asrl_sft(a) -> dict:
    from asrl.config import SFTConfig
    from asrl.data.render import tokenize_all
    from asrl.phases.sft import run_sft_phase

    policy = _asrl_policy(a)
    data, _ = tokenize_all(policy.tokenizer, _examples(a.sft_examples, 3), 512)
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=2e-4)
    t = time.perf_counter()
    run_sft_phase(policy, data, SFTConfig(batch_size=8), opt, random.Random(0))
    s = time.perf_counter() - t
    return {"seconds": s, "tokens": sum(len(d.ids) for d in data), "n": _base_params(policy.model)}


def asrl_grpo(a) -> dict:
    from asrl.config import FormatConfig, GRPOConfig, RewardConfig
    from asrl.phases.grpo import run_grpo_phase
    from asrl.rewards.builtin import RewardSet

    policy = _asrl_policy(a)
    cfg = GRPOConfig(
        questions_per_epoch=a.questions,
        num_generations=a.generations,
        max_new_tokens=a.new_tokens,
        steps_per_round=1,
        micro_batch_size=8,
    )
    rewards = RewardSet.from_config(RewardConfig(), FormatConfig().spec())
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr)
    train = _examples(a.questions, 5)
    t = time.perf_counter()
    res = run_grpo_phase(policy, train, cfg, rewards, opt, random.Random(0), seed=0)
    return {"seconds": time.perf_counter() - t, "generated": res.tokens_generated}


def _trl_model(a):
    from peft import LoraConfig

    model, tok = load_base(a.model)
    lora = LoraConfig(
        r=32, lora_alpha=64, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    return model, tok, lora


def _common(a, out: str) -> dict:
    return trl_common_args(out, a.precision == "bf16")


def trl_sft(a) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from asrl.data.render import tokenize_all

    model, tok, lora = _trl_model(a)
    data, _ = tokenize_all(tok, _examples(a.sft_examples, 3), 512)
    ds = Dataset.from_dict(  # the very token ids asrl trains on, prompt masked
        {
            "input_ids": [d.ids for d in data],
            "completion_mask": [[0] * d.n_prompt + [1] * d.n_response for d in data],
        }
    )
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            completion_only_loss=True,
            per_device_train_batch_size=8,
            num_train_epochs=1,
            learning_rate=2e-4,
            lr_scheduler_type="constant",
            max_length=512,
            **_common(a, out),
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora
        )
        t = time.perf_counter()
        trainer.train()
        s = time.perf_counter() - t
    return {"seconds": s, "tokens": sum(len(d.ids) for d in data), "n": _base_params(model)}


def trl_grpo(a) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from asrl.config import FormatConfig
    from asrl.data.render import chat_messages
    from asrl.rewards.builtin import make_correctness_reward, make_format_reward

    model, tok, lora = _trl_model(a)
    fmt = FormatConfig().spec()
    exs = _examples(a.questions, 5)
    ds = Dataset.from_dict(
        {
            "prompt": [chat_messages(e) for e in exs],
            "answer": [e.answer for e in exs],
            "reference": [e.response for e in exs],
        }
    )

    def text_reward(fn, weight):
        def reward(prompts, completions, **kw):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return [None if v is None else weight * v for v in fn(prompts, texts, **kw)]

        reward.__name__ = fn.__name__
        return reward

    G = a.generations
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            loss_type="grpo",
            beta=0.0,
            scale_rewards="group",
            num_generations=G,
            max_completion_length=a.new_tokens,
            temperature=0.7,
            top_p=0.95,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=a.questions * G // 8,
            generation_batch_size=a.questions * G,
            max_steps=1,
            learning_rate=2e-5,
            **{**_common(a, out), "logging_steps": 1},  # to read the completion lengths
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[
                text_reward(make_format_reward(fmt), 0.15),
                text_reward(make_correctness_reward(fmt), 0.85),
            ],
            args=args,
            train_dataset=ds,
            processing_class=tok,
            peft_config=lora,
        )
        t = time.perf_counter()
        trainer.train()
        s = time.perf_counter() - t
    logged = next(x for x in trainer.state.log_history if "completions/mean_length" in x)
    return {"seconds": s, "generated": round(logged["completions/mean_length"] * a.questions * G)}


WORKERS = {"asrl-sft": asrl_sft, "trl-sft": trl_sft, "asrl-grpo": asrl_grpo, "trl-grpo": trl_grpo}


# ----------------------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=1, help="GRPO rounds per framework")
    ap.add_argument("--sft-repeats", type=int, default=2)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--sft-examples", type=int, default=64)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--skip", choices=["sft", "grpo"], action="append", default=[])
    ap.add_argument(
        "--trl-defaults", action="store_true", help="also time TRL at its default bf16=True"
    )
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print_result(WORKERS[a.worker](a))
        return

    a.precision = resolve_precision(a.precision)  # auto: asrl's own choice on this CPU
    argv = [
        f"--model={a.model}",
        f"--precision={a.precision}",
        f"--sft-examples={a.sft_examples}",
        f"--questions={a.questions}",
        f"--generations={a.generations}",
        f"--new-tokens={a.new_tokens}",
    ]
    import trl

    print(f"torch {torch.__version__}, trl {trl.__version__}, {torch.get_num_threads()} threads")
    rates = matmul_rates()
    for k, v in rates.items():
        print(f"matmul 2048^3 {k:9s} {v:8.0f} GFLOP/s")
    readings: dict[str, list[dict]] = {}
    defaults = a.trl_defaults and a.precision != "bf16"  # else the same as the TRL reading
    plan = []
    if "sft" not in a.skip:
        plan += [("sft", a.sft_repeats)]
    if "grpo" not in a.skip:
        plan += [("grpo", a.repeats)]
    for phase, repeats in plan:
        for _ in range(repeats):  # alternate A/B inside each repeat
            for fw in ("asrl", "trl", "trl-default")[: 3 if defaults else 2]:
                name = f"{fw}-{phase}"
                worker, args = name.replace("-default", ""), argv
                if fw == "trl-default":
                    args = [
                        x if not x.startswith("--precision") else "--precision=bf16" for x in argv
                    ]
                r = run_child(__file__, worker, args)
                readings.setdefault(name, []).append(r)
                print(f"  {name}: {r}", flush=True)

    def med(name, key):
        return statistics.median(r[key] for r in readings[name])

    best = max(rates.values()) * 1e9
    print()
    print(f"{'work':36s} {'asrl':>10s} {'TRL':>10s} {'asrl/TRL':>9s}")
    if "sft" not in a.skip:
        tok = readings["asrl-sft"][0]["tokens"]
        n = readings["asrl-sft"][0]["n"]
        ours, theirs = tok / med("asrl-sft", "seconds"), tok / med("trl-sft", "seconds")
        print(
            f"{f'SFT {a.sft_examples} ex b=8 (tok/s)':36s} {ours:10.0f} {theirs:10.0f} {ours / theirs:9.2f}"
        )
        limit = best / (4 * n)
        print(
            f"{f'  of LoRA FLOP limit ({limit:.0f} tok/s)':36s} "
            f"{ours / limit:10.1%} {theirs / limit:10.1%}"
        )
        ro, rt = med("asrl-sft", "rss_mb"), med("trl-sft", "rss_mb")
        print(f"{'  peak RSS (MB)':36s} {ro:10.0f} {rt:10.0f} {ro / rt:9.2f}")
        if defaults:
            td = tok / med("trl-default-sft", "seconds")
            print(
                f"{'  TRL at its defaults (bf16), tok/s':36s} {ours:10.0f} {td:10.0f} {ours / td:9.2f}"
            )
    if "grpo" not in a.skip:
        label = f"GRPO {a.questions}x{a.generations}x{a.new_tokens} (s)"
        so, st = med("asrl-grpo", "seconds"), med("trl-grpo", "seconds")
        print(f"{label:36s} {so:10.1f} {st:10.1f} {so / st:9.2f}")
        go, gt = med("asrl-grpo", "generated"), med("trl-grpo", "generated")
        print(f"{'  tokens generated':36s} {go:10.0f} {gt:10.0f} {go / gt:9.2f}")
        ro, rt = med("asrl-grpo", "rss_mb"), med("trl-grpo", "rss_mb")
        print(f"{'  peak RSS (MB)':36s} {ro:10.0f} {rt:10.0f} {ro / rt:9.2f}")
        if defaults:
            sd = med("trl-default-grpo", "seconds")
            print(f"{'  TRL at its defaults (bf16), s':36s} {so:10.1f} {sd:10.1f} {so / sd:9.2f}")
    print(f"precision {a.precision}; medians of {a.sft_repeats} SFT / {a.repeats} GRPO readings")


if __name__ == "__main__":
    main()
