"""How much signal one GRPO step carries: the gradient noise scale of asrl's GRPO loss and of
its SFT loss, at one adapter, on the train split.

    PYTHONPATH=. .venv/bin/python benchmarks/grpo_noise_scale.py --start ADAPTER \
        --data DATA.jsonl [--groups 64] [--val-groups 0] [--heldout FRESH.jsonl] \
        [--sft-examples 96] [--seed 0] [--set KEY=VALUE ...] [--out FILE.json]

A step's gradient is the mean of per-unit gradients g_i: one GRPO group (a question and its
``grpo.num_generations`` completions, the unit advantages are computed over) or one SFT
example. With G = E[g] and Sigma their covariance, the *simple noise scale* (McCandlish et
al. 2018, "An Empirical Model of Large-Batch Training")

    B_simple = tr(Sigma) / |G|^2

is the batch size at which a step's noise equals its signal: a batch of B units makes about
B / (B + B_simple) of the progress of a noise-free step, so steps far below B_simple mostly
move the weights at random. (It is SGD's measure; for Adam it is the usual proxy.)

Method: the start adapter samples ``--groups`` train questions x G completions with asrl's
own rollout and reward (the GRPO phase's temperature, top-p and token budget), and each
group's gradient of the on-policy GRPO loss (``grpo.loss_type``) over the trainable weights
is taken alone. A group whose rewards are all equal has zero gradient and counts as a unit,
as it does in a step; the table also gives the informative groups alone (what
``grpo.filter_zero_std`` trains on). ``--sft-examples`` train examples give the SFT
gradients, each example's summed token loss divided by the mean response length (so the
mean of per-example gradients is the gradient of a batch's token-mean loss). From the Gram
matrix of the per-unit gradients: tr(Sigma) (unbiased), |G|^2 = |mean|^2 - tr(Sigma)/n
(unbiased), B_simple with a 90% interval from the jackknife standard error of |G|^2, and
the cosine of two disjoint half-sample means.

``--val-groups`` samples groups of held-out questions too (the val split, or ``--heldout``
records whose prompts the train split does not hold, e.g. fresh generator output): their
B_simple, and the expected GRPO gradient on train questions against the one on held-out
questions (does a step that raises the train reward point where the held-out reward
rises?), and each against the SFT gradient. Per-unit seconds: the rollout's generation time
per group; an SFT example's forward/backward. See docs/grpo_learns.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent


def flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The parameters' gradients as one float32 vector; the gradients are cleared."""
    out = torch.cat([p.grad.reshape(-1).float() for p in params])
    for p in params:
        p.grad = None
    return out


def noise_stats(gram: torch.Tensor) -> dict[str, float]:
    """tr(Sigma), |G|^2 and B_simple from the Gram matrix (n, n) of n per-unit gradients."""
    n = gram.size(0)
    mean_sq = float(gram.sum()) / n**2  # |mean of g_i|^2
    trace = (float(gram.diagonal().sum()) - n * mean_sq) / (n - 1)  # unbiased tr(Sigma)
    g2 = mean_sq - trace / n  # unbiased |G|^2
    return {"trace_sigma": trace, "g2": g2, "b_simple": trace / g2 if g2 > 0 else float("inf")}


def half_cosine(gram: torch.Tensor, rng: random.Random) -> float:
    """Cosine between the means of two disjoint random halves of the units."""
    idx = list(range(gram.size(0)))
    rng.shuffle(idx)
    a, b = idx[: len(idx) // 2], idx[len(idx) // 2 :]
    ab = float(gram[a][:, b].sum()) / (len(a) * len(b))
    aa = float(gram[a][:, a].sum()) / len(a) ** 2
    bb = float(gram[b][:, b].sum()) / len(b) ** 2
    return ab / (aa * bb) ** 0.5 if aa > 0 and bb > 0 else float("nan")


def jackknife_interval(gram: torch.Tensor, z: float = 1.645) -> tuple[float, float]:
    """A 90% interval for B_simple: tr(Sigma) / (|G|^2 -+ z se), se the leave-one-out
    jackknife standard error of the unbiased |G|^2 (inf where the bound is <= 0).

    (A bootstrap with replacement would not do: a resampled unit's copies look like two
    perfectly correlated units and inflate |G|^2.)"""
    n, m = gram.size(0), gram.size(0) - 1
    diag = gram.diagonal()
    # every unit's leave-one-out |mean|^2, tr(Sigma) and |G|^2 at once, from the sums
    mean_sq = (gram.sum() - 2 * gram.sum(1) + diag) / m**2
    trace = (diag.sum() - diag - m * mean_sq) / (m - 1)
    loo = mean_sq - trace / m
    se = float(((n - 1) / n * (loo - loo.mean()).pow(2).sum()).sqrt())
    st = noise_stats(gram)
    hi_g2, lo_g2 = st["g2"] + z * se, st["g2"] - z * se
    lo = st["trace_sigma"] / hi_g2 if hi_g2 > 0 else float("inf")
    hi = st["trace_sigma"] / lo_g2 if lo_g2 > 0 else float("inf")
    return lo, hi


def gram_of(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Pairwise dot products of the vectors, in float64 (zero vectors may be None)."""
    n = len(vectors)
    gram = torch.zeros((n, n), dtype=torch.float64)
    live = [i for i, v in enumerate(vectors) if v is not None]
    if live:
        stack = torch.stack([vectors[i] for i in live])
        gram[torch.tensor(live)[:, None], torch.tensor(live)[None, :]] = (stack @ stack.T).double()
    return gram


def grpo_gradients(a: argparse.Namespace, cfg, policy, questions, rewards) -> dict[str, Any]:
    """Each question's group: sampled, scored, and its on-policy GRPO gradient alone."""
    from asrl.algo.grpo_loss import group_advantages, grpo_loss, zero_std_groups
    from asrl.algo.logprobs import shared_prompt_logps
    from asrl.phases.rollouts import _pack, rollout

    g = cfg.grpo
    G = g.num_generations
    params = policy.trainable_parameters()
    pad = policy.tokenizer.pad_token_id
    vectors: list[torch.Tensor | None] = []
    gen_s = grad_s = 0.0
    exact = []
    chunk = g.questions_per_epoch
    for c in range(0, len(questions), chunk):
        policy.model.eval()
        ro = rollout(
            policy, questions[c : c + chunk], g, rewards, a.seed + c, cfg.data.system_prompt
        )
        gen_s += ro.seconds
        exact += [x == 1.0 for x in ro.components.get("correctness", [])]
        r = torch.tensor(ro.rewards, dtype=torch.float32)
        adv = group_advantages(r, G, g.scale_rewards)
        equal = zero_std_groups(r, G).tolist()
        policy.model.train()
        t0 = time.perf_counter()
        for q, eq in enumerate(equal):
            if eq:
                vectors.append(None)  # no advantage, no gradient
                continue
            rows = list(range(q * G, (q + 1) * G))
            b = _pack([ro.prompt_ids[i] for i in rows], [ro.completion_ids[i] for i in rows], pad)
            with policy.autocast():
                logps = shared_prompt_logps(
                    policy.model, b.input_ids, b.attention_mask, b.completion_mask.size(1),
                    g.temperature,
                )  # fmt: skip
            loss, _ = grpo_loss(
                logps,
                adv[rows],
                b.completion_mask.to(logps.dtype),
                loss_type=g.loss_type,
                epsilon_low=g.epsilon,
                epsilon_high=g.epsilon if g.epsilon_high is None else g.epsilon_high,
                max_completion_length=g.max_new_tokens,
                num_items=int(b.completion_mask.sum()),
            )
            loss.backward()
            vectors.append(flat_grad(params))
        grad_s += time.perf_counter() - t0
        done = min(c + chunk, len(questions))
        print(f"  grpo: {done}/{len(questions)} groups, {gen_s:.0f} s sampling", flush=True)
    informative = [v for v in vectors if v is not None]
    return {
        "all": gram_of(vectors),
        "informative": gram_of(informative) if len(informative) > 1 else None,
        "mean": mean_of(vectors),
        "zero_std_share": 1 - len(informative) / len(vectors),
        "exact": sum(exact) / max(len(exact), 1),
        "gen_s_per_unit": gen_s / len(vectors),
        "grad_s_per_unit": grad_s / max(len(informative), 1),
        "n": len(vectors),
        "questions": [ex.id for ex in questions],
        "zero_std": [v is None for v in vectors],
    }


def sft_gradients(a: argparse.Namespace, cfg, policy, train) -> dict[str, Any]:
    """Each example's SFT gradient alone (summed token loss / the sample's mean length)."""
    from asrl.data.render import collate, tokenize_all
    from asrl.phases.sft import _forward_loss

    rng = random.Random(a.seed + 1)
    picked = rng.sample(train, min(a.sft_examples, len(train)))
    data, _ = tokenize_all(policy.tokenizer, picked, cfg.data.max_length, cfg.data.system_prompt)
    mean_len = sum(t.n_response for t in data) / len(data)
    params = policy.trainable_parameters()
    policy.model.train()
    vectors = []
    t0 = time.perf_counter()
    for t in data:  # the mean of these is the gradient of a batch's token-mean loss
        batch = collate([t], policy.tokenizer.pad_token_id)
        _forward_loss(policy, batch, 1).div(mean_len).backward()
        vectors.append(flat_grad(params))
    return {
        "all": gram_of(vectors),
        "mean": mean_of(vectors),
        "grad_s_per_unit": (time.perf_counter() - t0) / len(data),
        "n": len(data),
    }


def mean_of(vectors: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The mean of the vectors (None counts as zero), in float64; None if all are None."""
    live = [v for v in vectors if v is not None]
    if not live:
        return None
    return torch.stack(live).double().sum(0) / len(vectors)


def alignment(x: dict[str, Any], y: dict[str, Any]) -> dict[str, float]:
    """E[g_x] . E[g_y] of two independent samples (the dot product of their means is an
    unbiased estimate of it) and the cosine it gives with each |E[g]|^2 the unbiased one
    (nan where one is <= 0: that sample's expected gradient is lost in its noise)."""
    if x["mean"] is None or y["mean"] is None:
        return {"dot": float("nan"), "cosine": float("nan")}
    dot = float(x["mean"] @ y["mean"])
    gx, gy = noise_stats(x["all"])["g2"], noise_stats(y["all"])["g2"]
    cos = dot / (gx * gy) ** 0.5 if gx > 0 and gy > 0 else float("nan")
    return {"dot": dot, "cosine": cos}


def heldout_questions(a: argparse.Namespace, cfg, fmt, train) -> list:
    """Every record of ``--heldout`` whose prompt is not one of the train split's."""
    from asrl.data.live import LiveDataset
    from asrl.data.sources import open_source

    data = LiveDataset([open_source(a.heldout, cfg.data, fmt)], cfg.data.split)
    data.refresh()
    seen = {ex.prompt_text for ex in train}
    return [ex for split in data.splits.values() for ex in split if ex.prompt_text not in seen]


def summarize(name: str, gram: torch.Tensor, unit: str, batch: int, rng: random.Random) -> dict:
    st = noise_stats(gram)
    lo, hi = jackknife_interval(gram)
    st.update(
        name=name,
        unit=unit,
        n=gram.size(0),
        b_lo=lo,
        b_hi=hi,
        half_cosine=half_cosine(gram, rng),
        step_batch=batch,
        step_efficiency=batch / (batch + st["b_simple"]),
    )
    return st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--start", required=True, help="the adapter (run dir, checkpoint or export)")
    ap.add_argument("--data", required=True, help="the records (JSONL); the train split is used")
    ap.add_argument("--config", default=str(ROOT / "configs/demo.yaml"))
    ap.add_argument("--groups", type=int, default=64, help="GRPO groups (questions) to sample")
    ap.add_argument("--val-groups", type=int, default=0, help="GRPO groups of held-out questions")
    ap.add_argument(
        "--heldout",
        help="records (JSONL) to draw the held-out questions from, all splits, any prompt "
        "the train split holds left out (default: the data's val split)",
    )
    ap.add_argument("--sft-examples", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", help="write the figures as JSON")
    a = ap.parse_args()
    if a.groups < 4 or a.sft_examples < 4 or 0 < a.val_groups < 4:
        raise SystemExit("--groups, --sft-examples and --val-groups need at least 4 units each")
    if a.threads:
        torch.set_num_threads(a.threads)
    sys.path.insert(0, str(ROOT))
    from _common import cpu_name, load_start

    from asrl.rewards.builtin import RewardSet

    cfg, fmt, policy, data = load_start(a.config, a.data, a.set, a.start, seed=a.seed)
    train = data.splits["train"]
    rewards = RewardSet.from_config(cfg.reward, fmt)
    g = cfg.grpo
    print(
        f"start {a.start}; {len(train)} train examples; GRPO {a.groups} groups x "
        f"{g.num_generations} at T {g.temperature}, <= {g.max_new_tokens} tokens, loss "
        f"{g.loss_type}; SFT {a.sft_examples} examples",
        flush=True,
    )
    rng = random.Random(a.seed)
    grpo = grpo_gradients(a, cfg, policy, rng.sample(train, min(a.groups, len(train))), rewards)
    val = heldout_questions(a, cfg, fmt, train) if a.heldout else data.splits["val"]
    if a.val_groups and len(val) < 4:
        where = a.heldout or "the val split"
        raise SystemExit(f"--val-groups: {where} holds {len(val)} held-out questions, need 4")
    held = (
        grpo_gradients(a, cfg, policy, rng.sample(val, min(a.val_groups, len(val))), rewards)
        if a.val_groups
        else None
    )
    sft = sft_gradients(a, cfg, policy, train)
    step_groups = g.questions_per_epoch // max(g.steps_per_round, 1)
    rows = [summarize("GRPO, every group", grpo["all"], "group", step_groups, rng)]
    if grpo["informative"] is not None:
        rows.append(
            summarize("GRPO, informative groups", grpo["informative"], "group", step_groups, rng)
        )
    if held is not None:
        rows.append(summarize("GRPO, held-out questions", held["all"], "group", step_groups, rng))
    rows.append(summarize("SFT", sft["all"], "example", cfg.sft.batch_size, rng))
    cosines = {"GRPO (train) and SFT": alignment(grpo, sft)}
    if held is not None:
        cosines["GRPO on train and on held-out questions"] = alignment(grpo, held)
        cosines["GRPO (held-out) and SFT"] = alignment(held, sft)
    model_name = cpu_name()
    print(f"\nmachine: {model_name}, {torch.get_num_threads()} threads")
    print(
        f"GRPO sample: {grpo['n']} groups, {grpo['zero_std_share']:.0%} zero-variance, "
        f"{grpo['exact']:.1%} of completions exact; {grpo['gen_s_per_unit']:.1f} s sampling "
        f"per group, {grpo['grad_s_per_unit']:.2f} s per group's gradient (alone)"
    )
    print(f"SFT sample: {sft['n']} examples, {sft['grad_s_per_unit']:.2f} s per example's gradient")
    print(
        "\n| gradient | units | tr(Sigma) | abs(G)^2 | B_simple (90% jackknife) | "
        "half-sample cosine | a step's batch | its share of a noise-free step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['n']} {r['unit']}s | {r['trace_sigma']:.3g} | {r['g2']:.3g} | "
            f"{r['b_simple']:.0f} {r['unit']}s ({r['b_lo']:.0f}–{r['b_hi']:.0f}) | "
            f"{r['half_cosine']:.2f} | {r['step_batch']} | {r['step_efficiency']:.1%} |"
        )
    print("\nexpected gradients against each other (cosine nan: a |G|^2 <= 0):")
    for name, c in cosines.items():
        print(f"  {name}: cosine {c['cosine']:.2f}, dot product {c['dot']:.3g}")
    if a.out:
        tensors = ("all", "informative", "mean")
        out = {
            "start": a.start,
            "machine": model_name,
            "sets": a.set,
            "grpo": {k: v for k, v in grpo.items() if k not in tensors},
            "val": None if held is None else {k: v for k, v in held.items() if k not in tensors},
            "sft": {k: v for k, v in sft.items() if k not in tensors},
            "rows": rows,
            "cosines": cosines,
        }
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
