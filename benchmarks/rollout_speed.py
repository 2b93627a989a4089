"""Rollout throughput: asrl's engines against the reference loop, TRL's generate and vLLM,
on the workload of a GRPO round, with this machine's own limits measured beside them.

    python benchmarks/rollout_speed.py [--repeats 3] [--shapes 8x6,32x8,64x8,eval30]
        [--vllm-python /path/to/venv/bin/python] [--out docs/rollout_speed-DATE.json]

The workload is a GRPO round exactly as configs/demo.yaml runs it: the embedded
SmolLM2-135M with a LoRA adapter (seeded random B, so the merge is not a no-op), chat-templated
generator questions with the demo's system prompt, temperature / top-p / grpo.max_new_tokens
of the config, G completions per question; ``evalN``: greedy, N questions, the eval batch.

Readings, each in a fresh child process (so peak RSS is its own), ``--repeats`` times:
* ``ref``: the decoding loop as of commit 39b4104 (read from git), the reference;
* ``asrl``: the built-in slot engine (``rollout.engine: asrl``); ``hf``: today's per-token
  loop (the sharded-model engine);
* ``trl``: ``model.generate`` as TRL's GRPOTrainer calls it without vLLM (G copies of each
  prompt, left-padded, the adapter unmerged, autocast as the trainer's bf16 flag);
* ``vllm``: the vllm engine in another interpreter (``--vllm-python``: a venv with vLLM and
  asrl installed), where one is given.

The limit: a workload's FLOPs (2 x linear parameters per token, prefill included, plus
attention) at the matmul rate measured at the decode step's shapes and dtype, or its bytes
(the weights once per step of the longest row, the KV cache each new token reads) at the
measured read bandwidth, whichever takes longer. "% limit" is that time over the measured one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

from _common import (
    commit,
    cpu_family,
    cpu_flags,
    cpu_name,
    print_result,
    progress,
    resolve_precision,
)

HERE = Path(__file__).resolve()
REFERENCE_COMMIT = "39b4104"
CONFIG = "configs/demo.yaml"


def parse_shape(shape: str) -> tuple[int, int, bool]:
    """'32x8' -> (32 questions, 8 completions, sampled); 'eval30' -> (30, 1, greedy)."""
    if shape.startswith("eval"):
        return int(shape[4:]), 1, True
    q, g = shape.split("x")
    return int(q), int(g), False


def reference_module():
    """asrl/model/generation.py as of REFERENCE_COMMIT, as a module (its imports still exist)."""
    src = subprocess.run(
        ["git", "show", f"{REFERENCE_COMMIT}:asrl/model/generation.py"],
        capture_output=True, text=True, cwd=HERE.parents[1], check=True,
    ).stdout  # fmt: skip
    mod = types.ModuleType("reference_generation")
    exec(compile(src, f"{REFERENCE_COMMIT}:generation.py", "exec"), mod.__dict__)
    return mod


def _setup(precision: str, shape: str, seed: int = 0):
    import torch

    from asrl.config import load_config
    from asrl.data.records import parse_record
    from asrl.data.render import prompt_ids
    from asrl.data.synthetic import make_record
    from asrl.model.loading import load_policy

    cfg = load_config(CONFIG, [f"model.autocast={'none' if precision == 'fp32' else precision}"])
    policy = load_policy(cfg.model, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for n, p in policy.model.named_parameters():
        if "lora_B" in n:
            p.data.copy_(torch.randn(p.shape, generator=g) * 1e-3)
    Q, G, greedy = parse_shape(shape)
    fmt = cfg.format.spec()
    exs = [parse_record(make_record(0 if not greedy else 1, i, fmt)) for i in range(Q)]
    tok = policy.tokenizer
    prompts = [prompt_ids(tok, ex, cfg.data.system_prompt) for ex in exs for _ in range(G)]
    return cfg, policy, prompts, greedy


def _decode_fn(engine: str, cfg, policy, greedy: bool, vllm=None):
    """A callable(prompts, seed) -> completion ids for ``engine``, and its weight-sync call."""
    import torch

    g = cfg.grpo
    n_new = cfg.eval.max_new_tokens if greedy else g.max_new_tokens
    batch = cfg.eval.batch_size if greedy else None
    if engine == "ref":
        ref = reference_module()
        return (
            lambda p, s: ref.generate(policy, p, n_new, g.temperature, g.top_p, greedy, s, batch),
            lambda: 0.0,
        )
    if engine in ("asrl", "hf", "vllm"):
        from asrl.config import RolloutConfig
        from asrl.rollout import attach

        attach(policy, RolloutConfig(engine=engine))
        eng = policy.engine
        return (
            lambda p, s: eng.generate(p, n_new, g.temperature, g.top_p, greedy, s, batch),
            eng.sync,
        )
    if engine == "trl":
        from transformers import GenerationConfig

        tok = policy.tokenizer
        gc = GenerationConfig(
            max_new_tokens=n_new, do_sample=not greedy, temperature=g.temperature, top_p=g.top_p,
            top_k=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip

        def trl_generate(prompts, seed):
            torch.manual_seed(seed)
            out = []
            step = batch or len(prompts)
            for i in range(0, len(prompts), step):
                chunk = prompts[i : i + step]
                width = max(map(len, chunk))
                ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk])
                attn = (
                    torch.arange(width)[None]
                    >= (width - torch.tensor([len(p) for p in chunk]))[:, None]
                ).long()  # noqa: E501
                with torch.no_grad(), policy.autocast():
                    seq = policy.model.generate(
                        input_ids=ids, attention_mask=attn, generation_config=gc, disable_compile=True
                    )  # fmt: skip
                for row in seq[:, width:].tolist():
                    eos = tok.eos_token_id
                    out.append(
                        row[: row.index(eos) + 1]
                        if eos in row
                        else [t for t in row if t != tok.pad_token_id]
                    )  # noqa: E501
            return out

        return trl_generate, lambda: 0.0
    raise SystemExit(f"unknown engine {engine}")


def worker(args) -> None:
    """One engine at one shape: --repeats readings, in this process."""
    import torch

    cfg, policy, prompts, greedy = _setup(args.precision, args.shape)
    decode, sync = _decode_fn(args.engine, cfg, policy, greedy)
    readings, syncs = [], []
    for r in range(args.repeats):
        syncs.append(sync())
        start = time.perf_counter()
        outs = decode(prompts, 1000 + r)
        dt = time.perf_counter() - start
        tokens = sum(map(len, outs))
        readings.append({"s": dt, "tokens": tokens, "tok_s": tokens / dt})
        progress(
            f"  {args.engine:5} {args.shape:6} repeat {r}: {tokens} tokens {dt:6.1f} s {tokens / dt:7.1f} tok/s"
        )  # noqa: E501
    res = {"readings": readings, "sync_s": syncs, "outputs": outs if greedy else None}
    res["work"] = workload(policy, prompts, outs)
    res["threads"] = torch.get_num_threads()
    print_result(res)


def workload(policy, prompts, outs) -> dict:
    """FLOPs and bytes of one round's decoding (engine-independent, from its outputs)."""
    base = policy.model.get_base_model()
    c = base.config
    linear = sum(
        m.weight.numel()
        for n, m in base.named_modules()
        if isinstance(m, __import__("torch").nn.Linear) and "lora_" not in n
    )
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    distinct = {tuple(p) for p in prompts}
    prefill_tokens = sum(len(p) for p in distinct)
    new = sum(map(len, outs))
    # positions each new token attends over: its prompt plus the tokens before it
    ctx = sum(len(p) * len(o) + len(o) * (len(o) - 1) // 2 for p, o in zip(prompts, outs))
    attn_flops = 4 * c.num_hidden_layers * c.num_attention_heads * hd * ctx
    kv_bytes_per_pos = 2 * c.num_hidden_layers * c.num_key_value_heads * hd
    return {
        "linear_params": linear,
        "flops": 2 * linear * (new + prefill_tokens) + attn_flops,
        "weight_elems": linear,
        "steps": max(map(len, outs)) if outs else 0,
        "kv_elems_read": kv_bytes_per_pos * ctx,
        "rows": len(prompts),
    }


def machine_limits(precision: str, rows: int, repeats: int = 5) -> dict:
    """Matmul FLOP/s at SmolLM2's decode-step shapes (rows x the linear layers) in the decode
    dtype, each shape by the faster of ``F.linear`` and a oneDNN-packed weight (what the
    engine uses), and read bandwidth (a sum over a 1 GiB tensor), best of ``repeats``."""
    import torch

    from asrl.rollout.decoder import Linear

    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    # (in, out) of each matmul of a step as the engine runs it: fused qkv, o, fused
    # gate/up, down, the head
    shapes = [(576, 960), (576, 576), (576, 1536 * 2), (1536, 576), (576, 49152)]
    xs = {k: torch.randn(rows, k, dtype=dt) for k, _ in shapes}
    ws = [torch.randn(n, k, dtype=dt) for k, n in shapes]
    flops = sum(2 * rows * w.numel() for w in ws)
    best = 0.0
    for w in ws:
        x, packed = xs[w.size(1)], Linear(w)
        shape_best = float("inf")
        for fn in (torch.nn.functional.linear, lambda x, w, p=packed: p(x)):
            for _ in range(repeats):
                t = time.perf_counter()
                fn(x, w)
                shape_best = min(shape_best, time.perf_counter() - t)
        best += shape_best
    big = torch.ones(1 << 28, dtype=torch.float32)  # 1 GiB
    bw = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        big.sum()
        bw = min(bw, time.perf_counter() - t)
    return {"flop_s": flops / best, "bytes_s": big.numel() * 4 / bw, "rows": rows}


def limit_seconds(work: dict, lim: dict, elem_bytes: int) -> float:
    t_flop = work["flops"] / lim["flop_s"]
    t_mem = (
        (work["steps"] * work["weight_elems"] + work["kv_elems_read"]) * elem_bytes / lim["bytes_s"]
    )  # noqa: E501
    return max(t_flop, t_mem)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )  # noqa: E501
    ap.add_argument("--shapes", default="8x6,32x8,64x8,eval30")
    ap.add_argument("--engines", default="ref,asrl,trl")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow-repeats", type=int, default=None,
                    help="repeats for ref and trl at 32x8 and 64x8 (default: --repeats)")  # fmt: skip
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--vllm-python", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None)
    ap.add_argument("--engine")
    ap.add_argument("--shape")
    args = ap.parse_args()
    args.precision = resolve_precision(args.precision)
    if args.worker:
        return worker(args)
    from _common import run_child

    results: dict = {"cpu": cpu_name(), "cpu_id": cpu_family(), "flags": cpu_flags(),
                     "precision": args.precision, "date": time.strftime("%Y-%m-%d"),
                     "commit": commit(), "shapes": {}}  # fmt: skip
    for shape in args.shapes.split(","):
        Q, G, greedy = parse_shape(shape)
        per = {}
        for engine in [e for e in args.engines.split(",") if e]:
            slow = engine in ("ref", "trl") and Q * G >= 256
            reps = args.slow_repeats if slow and args.slow_repeats else args.repeats
            progress(f"{engine} at {shape} ({reps} repeats)")
            argv = ["--engine", engine, "--shape", shape, "--repeats", str(reps),
                    "--precision", args.precision]  # fmt: skip
            per[engine] = run_child(str(HERE), engine, argv)
        if args.vllm_python:  # vLLM in its own interpreter (its venv pins other versions)
            progress(f"vllm at {shape} ({args.repeats} repeats)")
            argv = ["--engine", "vllm", "--shape", shape, "--repeats", str(args.repeats),
                    "--precision", args.precision]  # fmt: skip
            try:
                per["vllm"] = run_child(str(HERE), "vllm", argv, python=args.vllm_python)
            except SystemExit as e:
                progress(f"  vllm at {shape}: {e}")
        rows = min(Q * G, 32 if greedy else Q * G)
        per["limits"] = machine_limits(args.precision, min(rows, 256))
        results["shapes"][shape] = per
    report(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def report(results: dict) -> None:
    eb = 2 if results["precision"] == "bf16" else 4
    print(f"{results.get('date', '?')}, commit {results.get('commit', '?')}")
    print(f"CPU: {results['cpu']} ({results['cpu_id']}; {results['flags']}); "
          f"precision {results['precision']}")  # fmt: skip
    print(f"{'shape':7} {'engine':6} {'n':>2} {'best':>9} {'median':>7} {'x ref':>6} "
          f"{'x trl':>6} {'% limit':>7} {'sync s':>6} {'RSS MB':>7}")  # fmt: skip
    for shape, per in results["shapes"].items():
        lim = per["limits"]
        print(f"{shape:7} limit: matmul {lim['flop_s'] / 1e9:.0f} GFLOP/s at {lim['rows']} rows, "
              f"read {lim['bytes_s'] / 1e9:.1f} GB/s")  # fmt: skip
        med = {}
        for eng, r in per.items():
            if eng == "limits":
                continue
            tok_s = [x["tok_s"] for x in r["readings"]]
            med[eng] = statistics.median(tok_s)
        for eng, r in per.items():
            if eng == "limits":
                continue
            tok_s = [x["tok_s"] for x in r["readings"]]
            # the limit of the work this engine did (its own token count)
            best = min(r["readings"], key=lambda x: x["s"])
            pct = 100 * limit_seconds(r["work"], lim, eb) / best["s"]
            xr = med[eng] / med["ref"] if "ref" in med else float("nan")
            xt = med[eng] / med["trl"] if "trl" in med else float("nan")
            sync = statistics.median(r["sync_s"]) if r.get("sync_s") else 0.0
            print(f"{'':7} {eng:6} {len(tok_s):>2} {max(tok_s):9.0f} {med[eng]:7.0f} {xr:6.2f} "
                  f"{xt:6.2f} {pct:6.1f}% {sync:6.2f} {r['rss_mb']:7.0f}")  # fmt: skip
        if "ref" in per and "asrl" in per and per["ref"].get("outputs"):
            a, b = per["asrl"]["outputs"], per["ref"]["outputs"]
            same = sum(x == y for x, y in zip(a, b))
            print(f"{'':7} greedy: asrl and ref identical on {same}/{len(a)} rows")
    print("tok/s: best = the fastest reading, median of n; x ref, x trl: ratios of medians;")
    print("% limit: the limit's seconds for the fastest reading's work over its seconds")


if __name__ == "__main__":
    sys.exit(main())
