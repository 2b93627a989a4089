"""GRPO's signal mechanisms: dynamic sampling (DAPO), pass-rate question choice,
several rounds per phase, and the pure pieces behind them. Real tiny model, real rewards
through the ``reward.custom`` hook, real runs and resumes."""

import json
import math
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from asrl.algo.grpo_loss import decayed_lr, zero_std_groups
from asrl.config import (
    ConfigError,
    GRPOConfig,
    ModelConfig,
    RewardConfig,
    RewardFunctionConfig,
    load_config,
)
from asrl.data.format import ThinkingFormat
from asrl.model.loading import load_policy
from asrl.phases.grpo import run_grpo_phase
from asrl.phases.grpo_update import GRPOHooks
from asrl.phases.rollouts import truncated
from asrl.phases.selection import (
    PassRates,
    choose_questions,
    group_pass_fractions,
    selection_weight,
)
from asrl.rewards.builtin import RewardSet
from asrl.train.loop import train
from asrl.types import Example, Rollout

FMT = ThinkingFormat()
FLAT: set[str] = set()  # records whose every completion gets the same reward
CALLS: list[list[str]] = []  # the ids each reward call scored (one call per rollout)


def flat_for_some(prompts, completions, id, **_):
    """Constant for the records in FLAT, else a value that differs between completions."""
    CALLS.append(list(id))
    return [0.0 if i in FLAT else (sum(map(ord, c)) % 97) / 97 for i, c in zip(id, completions)]


def constant(prompts, completions, **_):
    return [0.5 for _ in completions]


def parity(prompts, completions, **_):
    return [float(len(c) % 2) for c in completions]


def examples(n: int) -> list[Example]:
    return [
        Example(id=f"ex-{i}", messages=({"role": "user", "content": f"Say {i}."},), response="ok")
        for i in range(n)
    ]


def custom_rewards(fn: str) -> RewardSet:
    cfg = RewardConfig(
        format_weight=0.0,
        correctness_weight=0.0,
        custom=[RewardFunctionConfig(path=f"{__name__}:{fn}")],
    )
    return RewardSet.from_config(cfg, FMT)


@pytest.fixture(scope="module")
def policy():
    return load_policy(ModelConfig(name="tiny-random-llama", autocast="none", threads=1), seed=0)


# ---- pure pieces


def test_zero_std_groups_nan_aware():
    nan = float("nan")
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5, nan, 2.0, nan, nan, nan, nan, 3.0, 3.0, nan])
    # equal; varied; one scored (no advantage); none scored; equal where scored
    assert zero_std_groups(r, 3).tolist() == [True, False, True, True, True]
    assert zero_std_groups(torch.tensor([0.0, 1e-7, 0.0, 1.0]), 2).tolist() == [True, False]


def test_truncated_is_trls_rule():
    eos, pad = 2, 0
    rows = [[5, 6, eos], [5, 6, 7], [], [5, pad], [eos]]
    assert truncated(rows, {eos, pad}) == [False, True, False, False, False]


def test_decayed_lr_linear_over_the_whole_phase():
    lrs = [decayed_lr(1.0, 0.5, k, 5) for k in range(5)]
    assert lrs == pytest.approx([1.0, 0.875, 0.75, 0.625, 0.5])
    assert decayed_lr(2.0, 0.1, 0, 1) == 2.0  # one step: the full rate


def test_group_pass_fractions_hand_computed():
    nan = float("nan")
    scores = [1.0, 0.5, None, nan, 1.0, 1.0, None, None, None]
    assert group_pass_fractions(scores, 3, threshold=1.0) == [0.5, 1.0, None]
    assert group_pass_fractions([0.4, 0.6], 2, threshold=0.5) == [0.5]


def _ro(ids, G, correctness=None, rewards=None):
    exs = [Example(id=i, messages=({"role": "user", "content": "q"},), response="r") for i in ids]
    exs = [e for e in exs for _ in range(G)]
    comps = {} if correctness is None else {"correctness": correctness}
    rewards = rewards if rewards is not None else [0.0] * len(exs)
    return Rollout(exs, [""] * len(exs), [[1]] * len(exs), [[1]] * len(exs), rewards, comps)


def test_pass_rates_ema_state_and_growth():
    rates = PassRates()
    rates.observe(_ro(["a", "b"], 2, correctness=[1.0, -0.5, 1.0, 1.0]), 2, 1.0, 0.5)
    assert rates.rates == {"a": 0.5, "b": 1.0}  # first observation: the fraction itself
    rates.observe(_ro(["a"], 2, correctness=[1.0, 1.0]), 2, 1.0, 0.5)
    assert rates.get("a") == pytest.approx(0.75) and rates.get("new") is None
    # no correctness function: the total reward decides
    rates.observe(_ro(["c"], 2, rewards=[2.0, 0.0]), 2, 1.0, 0.5)
    assert rates.get("c") == 0.5
    # no score at all: no entry
    rates.observe(_ro(["d"], 2, correctness=[None, None]), 2, 1.0, 0.5)
    assert rates.get("d") is None
    back = PassRates()
    back.restore(json.loads(json.dumps(rates.state())))  # as checkpoints store it
    assert back == rates


def test_choose_questions_uniform_is_the_old_draw_and_excludes():
    train = examples(20)
    cfg = GRPOConfig()
    assert choose_questions(train, 5, random.Random(3), cfg, PassRates()) == [
        train.index(e) for e in random.Random(3).sample(train, 5)
    ]
    picked = choose_questions(train, 30, random.Random(3), cfg, PassRates(), exclude={0, 1, 2})
    assert sorted(picked) == list(range(3, 20))


def test_choose_questions_pass_rate_prefers_informative_and_unseen():
    train = examples(60)
    rates = PassRates({f"ex-{i}": (0.0 if i % 2 else 1.0) for i in range(20)})  # solved/never
    rates.rates.update({f"ex-{i}": 0.5 for i in range(20, 40)})  # informative; 40..59 unseen
    cfg = GRPOConfig(question_selection="pass_rate")
    assert selection_weight(None, 0.05) == selection_weight(0.5, 0.05) == pytest.approx(0.3)
    a = choose_questions(train, 10, random.Random(7), cfg, rates)
    assert a == choose_questions(train, 10, random.Random(7), cfg, rates)  # deterministic
    assert len(set(a)) == 10
    counts = {"flat": 0, "informative": 0, "unseen": 0}
    for seed in range(200):
        for i in choose_questions(train, 10, random.Random(seed), cfg, rates, exclude={59}):
            assert i != 59
            counts["flat" if i < 20 else "informative" if i < 40 else "unseen"] += 1
    # weights 0.05 vs 0.3: about 6x fewer flat records than either other kind
    assert counts["flat"] * 3 < counts["informative"] and counts["flat"] * 3 < counts["unseen"]
    uniform = [
        i
        for seed in range(200)
        for i in choose_questions(train, 10, random.Random(seed), GRPOConfig(), rates)
    ]
    assert sum(i < 20 for i in uniform) * 3 > counts["flat"] * 6  # uniform does not prefer


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("grpo.question_selection=hardest", "grpo.question_selection"),
        ("grpo.num_iterations=0", "grpo.num_iterations"),
        ("grpo.rounds_per_phase=0", "grpo.rounds_per_phase"),
        ("grpo.max_resample_rounds=-1", "grpo.max_resample_rounds"),
        ("grpo.pass_rate_ema=0", "grpo.pass_rate_ema"),
        ("grpo.pass_rate_floor=0", "grpo.pass_rate_floor"),
        ("grpo.filter_zero_std=maybe", "grpo.filter_zero_std"),
    ],
)
def test_bad_settings_name_the_key(setting, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("configs/tiny.yaml", [setting])


# ---- dynamic sampling


def _grpo_cfg(**kw):
    base = dict(
        lr=1e-3,
        questions_per_epoch=3,
        num_generations=3,
        max_new_tokens=6,
        steps_per_round=1,
        micro_batch_size=16,
        samples_to_log=100,
    )
    return GRPOConfig(**{**base, **kw})


def _phase(policy, cfg, rewards, train, seed=1, **kw):
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr)
    snapshot = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    try:
        return run_grpo_phase(policy, train, cfg, rewards, opt, random.Random(0), seed, **kw)
    finally:  # the module's policy stays as it was for the next test
        with torch.no_grad():
            for n, p in policy.model.named_parameters():
                p.copy_(snapshot[n])


def test_dynamic_sampling_draws_more_groups_until_enough_are_informative(policy):
    train = examples(10)
    FLAT.clear()
    FLAT.update(f"ex-{i}" for i in range(6))  # 6 of 10 records give equal rewards
    rewards = custom_rewards("flat_for_some")
    cfg = _grpo_cfg(filter_zero_std=True, max_resample_rounds=4)
    CALLS.clear()
    res = _phase(policy, cfg, rewards, train)
    draws = [list(dict.fromkeys(ids)) for ids in CALLS]  # question ids, in order
    assert len(draws) > 1  # the first draw had equal-reward groups: more were drawn
    informative = 0
    for n, draw in enumerate(draws):
        assert len(draw) == 3 - informative  # exactly what was missing
        assert not set(draw) & {i for d in draws[:n] for i in d}  # none used twice a round
        informative += sum(i not in FLAT for i in draw)
    assert informative == 3 or len(draws) == 1 + cfg.max_resample_rounds
    drawn = [i for d in draws for i in d]
    m = res.metrics
    assert m["train/resample_rounds"] == len(draws) - 1
    assert m["train/groups_filtered"] == sum(i in FLAT for i in drawn)
    assert m["train/frac_zero_std_groups"] == pytest.approx(m["train/groups_filtered"] / len(drawn))
    assert m["train/skipped_updates"] == 0 and math.isfinite(m["train/grpo_loss"])
    assert res.examples_seen == len(drawn)
    # the random tiny model never ends a completion early: every one is max_new_tokens long,
    # so the ledger's generated tokens count every draw, the filtered groups' too
    assert m["train/clipped_ratio"] == 1.0
    assert res.tokens_generated == len(drawn) * cfg.num_generations * cfg.max_new_tokens
    trained = {s["id"] for s in res.samples}
    assert trained == {i for i in drawn if i not in FLAT} and len(res.samples) == 3 * informative

    # the same phase without the filter: one draw, every group trained on
    CALLS.clear()
    plain = _phase(policy, _grpo_cfg(), rewards, train)
    assert len(CALLS) == 1 and plain.examples_seen == 3
    assert plain.metrics["train/groups_filtered"] == 0 == plain.metrics["train/resample_rounds"]
    assert len(plain.samples) == 9


def test_all_groups_equal_after_the_bound_is_a_logged_clean_skip(tmp_path, capsys):
    out = tmp_path / "out"
    cfg = load_config(
        "configs/tiny.yaml",
        [
            f"output_dir={out}",
            f"data.path={tmp_path / 'data.jsonl'}",
            "schedule.method=grpo",
            "schedule.epochs=1",
            "eval.max_examples=2",
            "data.generate.count=30",
            "reward.format_weight=0",
            "reward.correctness_weight=0",
            f"reward.custom=[{{path: '{__name__}:constant'}}]",
            "grpo.filter_zero_std=true",
            "grpo.max_resample_rounds=2",
        ],
    )
    train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    grpo = next(r for r in rows if r["phase"] == "grpo")
    g = cfg.grpo
    assert grpo["train/skipped_updates"] == 1 and grpo["train/resample_rounds"] == 2
    assert grpo["train/groups_filtered"] == 3 * g.questions_per_epoch  # three draws
    assert grpo["train/grpo_loss"] is None and grpo["train/frac_zero_std_groups"] == 1.0
    assert grpo["compute/examples_seen"] == 3 * g.questions_per_epoch
    assert grpo["compute/tokens_generated"] == 3 * g.questions_per_epoch * g.num_generations * 12
    assert grpo["compute/tokens_trained"] == 0
    assert "update skipped" in capsys.readouterr().out
    # no optimizer step: the adapter is still PEFT's initial one (B = 0)
    weights = load_file(out / "checkpoints" / "epoch-0001" / "adapter_model.safetensors")
    assert all(float(v.abs().max()) == 0 for k, v in weights.items() if "lora_B" in k)
    assert [r["phase"] for r in rows][-3:] == ["grpo", "eval", "test"]  # test: once, at the end


# ---- several rounds per phase, several passes per round


def test_rounds_per_phase_and_num_iterations_share_one_lr_schedule(policy):
    train = examples(10)
    cfg = _grpo_cfg(rounds_per_phase=3, steps_per_round=2, num_iterations=2, lr_final_ratio=0.5)
    seen: list[tuple[int, float]] = []
    opt_box = {}

    def scale(k):
        seen.append((k, opt_box["opt"].param_groups[0]["lr"]))
        return 1.0

    CALLS.clear()
    FLAT.clear()
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr)
    opt_box["opt"] = opt
    snapshot = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    try:
        res = run_grpo_phase(
            policy,
            train,
            cfg,
            custom_rewards("flat_for_some"),
            opt,
            random.Random(0),
            1,
            hooks=GRPOHooks(loss_scale=scale),
        )
    finally:
        with torch.no_grad():
            for n, p in policy.model.named_parameters():
                p.copy_(snapshot[n])
    total = 3 * 2 * 2
    assert res.steps == total and [k for k, _ in seen] == list(range(total))
    assert [lr for _, lr in seen] == pytest.approx(
        [decayed_lr(1e-3, 0.5, k, total) for k in range(total)]
    )
    assert res.metrics["train/lr"] == pytest.approx(0.5e-3)
    assert len(CALLS) == 3  # a fresh rollout each round
    assert res.examples_seen == 9 and math.isfinite(res.metrics["train/entropy"])


# ---- pass rates: run state across data growth and resume


def test_pass_rates_survive_growth_and_resume_like_an_uninterrupted_run(tmp_path):
    def cfg(root):
        return load_config(
            "configs/tiny.yaml",
            [
                f"output_dir={root / 'out'}",
                f"data.path={tmp_path / 'a' / 'data.jsonl'}",
                "schedule.epochs=3",
                "eval.max_examples=2",
                "data.generate.count=30",
                "sft.max_examples_per_phase=8",
                "data.inject.at_epoch=2",
                "data.inject.count=10",
                "model.threads=1",
                "reward.format_weight=0",
                "reward.correctness_weight=0",
                f"reward.custom=[{{path: '{__name__}:parity'}}]",
                "grpo.question_selection=pass_rate",
                "grpo.questions_per_epoch=4",
            ],
        )

    a = tmp_path / "a"
    train(cfg(a))
    b = tmp_path / "b"
    shutil.copytree(a / "out", b / "out")  # "crashed" after epoch 3's SFT phase
    shutil.rmtree(b / "out" / "checkpoints" / "epoch-0003")
    (b / "out" / "summary.json").unlink()
    train(cfg(b), resume=True)

    def lines(root):
        rows = [json.loads(x) for x in (root / "out" / "metrics.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in r.items() if not k.startswith(("perf/", "time")) and k != "time"}
            for r in rows
        ]

    # the same lines; floats to within rounding (generation merges the adapter into the base
    # weights and unmerges it, so a process that generated more carries other roundings)
    la, lb = lines(a), lines(b)
    assert [r.keys() for r in la] == [r.keys() for r in lb]
    for ra, rb in zip(la, lb):
        for k, v in ra.items():
            if isinstance(v, float):
                assert rb[k] == pytest.approx(v, rel=1e-5, abs=1e-7), (ra["epoch"], ra["phase"], k)
            else:
                assert rb[k] == v, (ra["epoch"], ra["phase"], k)
    grpo = [r for r in la if r["phase"] == "grpo"]
    assert [r["train/questions_unseen"] for r in grpo][0] == 4  # nothing seen yet
    assert any(r["train/questions_mean_pass_rate"] is not None for r in grpo[1:])
    state = json.loads((a / "out" / "checkpoints" / "epoch-0003" / "state.json").read_text())
    again = json.loads((b / "out" / "checkpoints" / "epoch-0003" / "state.json").read_text())
    assert state["pass_rates"] == again["pass_rates"] and len(state["pass_rates"]["rates"]) > 4
    # grpo.fresh_questions' record of SFT epochs resumes too (8 records per SFT phase)
    assert state["sft_history"] == again["sft_history"]
    assert sorted(set(state["sft_history"]["last"].values())) == [1, 2, 3]
    assert len([p for p in state["pass_rates"]["rates"].values() if 0 < p < 1]) > 0
    # the records added at epoch 2 (data.inject) are tracked like the others once drawn
    assert any(k.startswith("syn-percent") for k in state["pass_rates"]["rates"])


# ---- the RL half learns


def brevity(prompts, completions, **_):
    """A dense reward: shorter completions (in characters) score higher."""
    return [-len(c) / 64.0 for c in completions]


def _mean_reward(policy, train, cfg, rewards, seed):
    from asrl.phases.rollouts import rollout

    policy.model.eval()
    ro = rollout(policy, train[:12], cfg, rewards, seed=seed)
    return sum(ro.rewards) / len(ro.rewards)


def test_grpo_raises_a_dense_reward(tmp_path):
    """Four rounds of GRPO (16 optimizer steps) on a brevity reward, through reward.custom,
    raise the mean reward of fresh samples far more than noise does.

    Measured on this tiny random model (seed 0) at temperature 0.08, where it emits a mix of
    single newlines and whole words: reward gain with lr 1e-2 of 0.30 to 0.40 over four
    run seeds; with lr 0 (no learning) -0.06 to 0.07. The threshold
    sits between the two. If the update stops learning (a sign or advantage bug, no step),
    the gain falls to the lr-0 noise and this fails.
    """
    from asrl.data.records import parse_record
    from asrl.data.synthetic import generate_records

    cfg = load_config(
        "configs/tiny.yaml",
        [
            "reward.format_weight=0",
            "reward.correctness_weight=0",
            f"reward.custom=[{{path: '{__name__}:brevity'}}]",
            "grpo.lr=1.0e-2",
            "grpo.temperature=0.08",
            "grpo.questions_per_epoch=4",
            "grpo.num_generations=6",
            "grpo.max_new_tokens=8",
            "grpo.micro_batch_size=32",
            "grpo.rounds_per_phase=4",
            "grpo.steps_per_round=2",
            "grpo.num_iterations=2",
            "model.threads=1",
        ],
    )
    policy = load_policy(cfg.model, seed=0)
    records = generate_records(20, seed=0, fmt=cfg.format.spec(), mix="paper")
    data = [parse_record(r) for r in records]
    rewards = RewardSet.from_config(cfg.reward, cfg.format.spec())
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.grpo.lr, weight_decay=0.0)
    before = _mean_reward(policy, data, cfg.grpo, rewards, seed=1000)
    res = run_grpo_phase(policy, data, cfg.grpo, rewards, opt, random.Random(0), 0)
    after = _mean_reward(policy, data, cfg.grpo, rewards, seed=2000)
    assert res.steps == 16
    assert after - before > 0.17, (before, after)
