"""Our GRPO/SFT maths against TRL's own trainers on the same batch (skipped without trl).

GRPO: ``completion_logps`` + ``grpo_loss`` vs a real ``GRPOTrainer._compute_loss`` for each
loss_type (loss value and LoRA gradients). Advantages: ``group_advantages`` vs the expression
in ``GRPOTrainer._generate_and_score_completions`` built from TRL's own ``nanstd``. SFT:
``sft_loss`` and ``_forward_loss`` vs a real ``SFTTrainer.compute_loss`` with
``completion_only_loss=True`` on a batch made by the trainer's own dataset preparation and
data collator.
"""

import random
import warnings

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

from asrl.algo.grpo_loss import group_advantages, grpo_loss  # noqa: E402
from asrl.algo.logprobs import completion_logps, shared_prompt_logps  # noqa: E402
from asrl.config import GRPOConfig as AsrlGRPOConfig  # noqa: E402
from asrl.config import ModelConfig  # noqa: E402
from asrl.data.render import collate, tokenize_example  # noqa: E402
from asrl.model.loading import load_policy  # noqa: E402
from asrl.phases.grpo_update import grpo_update  # noqa: E402
from asrl.phases.sft import _forward_loss, sft_loss  # noqa: E402
from asrl.types import Example, Rollout  # noqa: E402

TEMPERATURE = 0.7
B, P, C, G = 4, 6, 5, 2  # rows, prompt width, completion width, group size


@pytest.fixture(scope="module")
def policy():
    pol = load_policy(ModelConfig(name="tiny-random-llama", autocast="none"), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter (and A's grads) non-trivial
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pol


def _lora_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _zero(model):
    for p in model.parameters():
        p.grad = None


def _grpo_batch(policy):
    """Prompts left-padded, completions right-padded with uneven lengths, fixed advantages."""
    g = torch.Generator().manual_seed(2)
    vocab = policy.model.config.vocab_size
    pad = policy.tokenizer.pad_token_id
    prompt_lens, completion_lens = [6, 4, 5, 3], [5, 2, 4, 1]
    prompt_ids = torch.full((B, P), pad, dtype=torch.long)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)
    completion_ids = torch.full((B, C), pad, dtype=torch.long)
    completion_mask = torch.zeros((B, C), dtype=torch.long)
    for i, (lp, lc) in enumerate(zip(prompt_lens, completion_lens)):
        prompt_ids[i, P - lp :] = torch.randint(0, vocab, (lp,), generator=g)
        prompt_mask[i, P - lp :] = 1
        completion_ids[i, :lc] = torch.randint(0, vocab, (lc,), generator=g)
        completion_mask[i, :lc] = 1
    advantages = torch.tensor([1.3, -0.7, 0.4, -1.1])
    return prompt_ids, prompt_mask, completion_ids, completion_mask, advantages


def _trl_grpo(policy, tmp_path, loss_type, beta, epsilon, epsilon_high, kl_correction, **extra):
    extra.setdefault("per_device_train_batch_size", B)
    args = GRPOConfig(
        output_dir=str(tmp_path / loss_type),
        use_bias_correction_kl=kl_correction,
        loss_type=loss_type,
        beta=beta,
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        max_completion_length=C,
        num_generations=G,
        temperature=TEMPERATURE,
        gradient_checkpointing=False,
        bf16=False,  # TRL defaults to bf16 autocast; ours runs fp32 here (autocast="none")
        report_to=[],
        use_cpu=True,
        **extra,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(
            model=policy.model,
            reward_funcs=[lambda prompts, completions, **k: [0.0] * len(completions)],
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}),
            processing_class=policy.tokenizer,
        )
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); one micro-batch
    return trainer


# (loss_type, beta, epsilon, epsilon_high, old log-probs given, KL times ratio)
CASES = [
    ("grpo", 0.0, 0.2, None, False, False),  # on-policy: TRL uses per_token_logps.detach()
    ("bnpo", 0.0, 0.2, None, True, False),
    ("dr_grpo", 0.0, 0.2, None, True, False),
    ("dapo", 0.04, 0.2, 0.28, True, False),  # KL to the reference, asymmetric clip
    # TRL's default use_bias_correction_kl=True: KL * ratio (changes the gradient on-policy too)
    ("grpo", 0.1, 0.2, None, False, True),
    ("dapo", 0.04, 0.2, 0.28, True, True),
]


@pytest.mark.parametrize(("loss_type", "beta", "eps", "eps_high", "with_old", "kl_corr"), CASES)
def test_grpo_loss_and_grads_match_trl_trainer(
    policy, tmp_path, loss_type, beta, eps, eps_high, with_old, kl_corr
):
    model = policy.model
    model.train()
    prompt_ids, prompt_mask, completion_ids, completion_mask, adv = _grpo_batch(policy)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)

    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        current = completion_logps(model, input_ids, attention_mask, C, TEMPERATURE)
        # old policy: noisy enough that some ratios leave [1 - eps, 1 + eps] (clipping active)
        old = current + 0.3 * torch.randn(current.shape, generator=g) if with_old else None
        with policy.reference():
            ref = completion_logps(model, input_ids, attention_mask, C, TEMPERATURE)
    num_items = completion_mask.sum()

    # ours
    _zero(model)
    logps = completion_logps(model, input_ids, attention_mask, C, TEMPERATURE)
    ours, _ = grpo_loss(
        logps,
        adv,
        completion_mask,
        old_logps=old,
        ref_logps=ref if beta else None,
        loss_type=loss_type,
        epsilon_low=eps,
        epsilon_high=eps if eps_high is None else eps_high,
        beta=beta,
        max_completion_length=C,
        num_items=num_items,
        kl_ratio_correction=kl_corr,
    )
    ours.backward()
    ours_grads = _lora_grads(model)

    # TRL's real trainer, same model object and batch
    trainer = _trl_grpo(policy, tmp_path, loss_type, beta, eps, eps_high, kl_corr)
    assert trainer.model is model and trainer.model.training
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": adv,
        "num_items_in_batch": num_items,
    }
    if with_old:
        inputs["old_per_token_logps"] = old
    if beta:
        inputs["ref_per_token_logps"] = ref
    _zero(model)
    try:
        theirs = trainer._compute_loss(model, inputs)
        theirs.backward()
        theirs_grads = _lora_grads(model)
    finally:
        _zero(model)
        if "ref" in model.peft_config:  # TRL adds a frozen copy of the adapter when beta > 0
            model.delete_adapter("ref")
            model.set_adapter("default")

    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=0)
    assert ours_grads.keys() == theirs_grads.keys() and ours_grads
    assert any(float(v.abs().max()) > 0 for v in ours_grads.values())
    for name in ours_grads:
        assert torch.allclose(ours_grads[name], theirs_grads[name], atol=1e-6, rtol=1e-5), name
    if with_old:  # the case exercised clipping, not only the unclipped branch
        ratio = torch.exp(current - old)[completion_mask.bool()]
        assert ((ratio < 1 - eps) | (ratio > 1 + (eps_high or eps))).any()


def _trl_advantages(rewards: torch.Tensor, num_generations: int, scale: str) -> torch.Tensor:
    """TRL 1.x GRPOTrainer._generate_and_score_completions, sum_then_normalize branch
    (trl/trainer/grpo_trainer.py, lines ~2765-2787 and the nan_to_num at ~2810),
    with TRL's own ``nanstd``; only the single-reward-function path is kept."""
    mean = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean = mean.repeat_interleave(num_generations, dim=0)
    if scale in ["group", "none"]:
        std = nanstd(rewards.view(-1, num_generations), dim=1)
        std = std.repeat_interleave(num_generations, dim=0)
    else:  # batch
        std = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl_formula(scale):
    g = torch.Generator().manual_seed(4)
    G6 = 6
    rewards = torch.randn(5 * G6, generator=g)
    rewards[torch.rand(rewards.shape, generator=g) < 0.25] = float("nan")
    rewards[G6 : 2 * G6] = float("nan")  # an unscorable group
    rewards[2 * G6 : 3 * G6] = float("nan")
    rewards[2 * G6 + 1] = 0.5  # a group with a single scored completion
    rewards[3 * G6 : 4 * G6] = 1.0  # a zero-variance group
    ours = group_advantages(rewards, G6, scale)
    theirs = _trl_advantages(rewards, G6, scale)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_sft_loss_matches_trl_sft_trainer(policy, tmp_path):
    model = policy.model
    model.train()
    tok = policy.tokenizer
    examples = [
        Example(id=str(i), messages=({"role": "user", "content": p},), response=r)
        for i, (p, r) in enumerate(
            [
                ("What is 2 + 2?", "It is 4."),
                ("Name a colour.", "Blue, the colour of a clear sky at noon."),
                ("Say hi.", "Hi!"),
            ]
        )
    ]
    tokenized = [tokenize_example(tok, ex) for ex in examples]
    ds = Dataset.from_dict(
        {
            "input_ids": [t.ids for t in tokenized],
            "completion_mask": [[0] * t.n_prompt + [1] * t.n_response for t in tokenized],
        }
    )
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        completion_only_loss=True,
        per_device_train_batch_size=len(examples),
        gradient_checkpointing=False,
        bf16=False,
        report_to=[],
        use_cpu=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    assert trainer.model is model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(examples))])
    ours_batch = collate(tokenized, tok.pad_token_id)
    # TRL's collator built the same labels (prompt and padding -100) from the completion mask
    assert torch.equal(
        batch["input_ids"][batch["attention_mask"].bool()],
        ours_batch["input_ids"][ours_batch["attention_mask"].bool()],
    )
    assert torch.equal(batch["labels"], ours_batch["labels"])

    _zero(model)
    theirs = trainer.compute_loss(model, dict(batch))
    theirs.backward()
    theirs_grads = _lora_grads(model)

    _zero(model)
    logits = model(
        input_ids=ours_batch["input_ids"], attention_mask=ours_batch["attention_mask"]
    ).logits
    ours = sft_loss(logits, ours_batch["labels"])
    ours.backward()
    ours_grads = _lora_grads(model)

    _zero(model)
    n = int((ours_batch["labels"][:, 1:] != -100).sum())
    fast = _forward_loss(policy, ours_batch, n)
    fast.backward()
    fast_grads = _lora_grads(model)
    _zero(model)

    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(fast.detach(), theirs.detach(), rtol=1e-5, atol=0)
    for name in theirs_grads:
        assert torch.allclose(ours_grads[name], theirs_grads[name], atol=1e-6, rtol=1e-5), name
        assert torch.allclose(fast_grads[name], theirs_grads[name], atol=1e-6, rtol=1e-5), name


# --------------------------------------------------------------------------------------
# Whole updates: our grpo_update (real rollout layout, micro-batching, old log-probs, the
# optimizer) against TRL's procedure driven step by step with its own pieces: old
# log-probs from GRPOTrainer._get_per_token_logps_and_entropies once, before any step (as
# _generate_and_score_completions does when generation and optimisation steps are not
# aligned), the same generation batch split into steps_per_generation slices reused for
# num_iterations passes (as _prepare_inputs does), GRPOTrainer._compute_loss on each
# slice, one optimizer step per slice. SGD, so the comparison is linear in the gradients.


def _rows(policy):
    """The _grpo_batch rows as a rollout would hold them: unpadded token lists."""
    prompt_ids, prompt_mask, completion_ids, completion_mask, _ = _grpo_batch(policy)
    prompts = [p[m.bool()].tolist() for p, m in zip(prompt_ids, prompt_mask)]
    completions = [c[m.bool()].tolist() for c, m in zip(completion_ids, completion_mask)]
    return prompts, completions


def _rollout_of(prompts, completions, rewards):
    ex = Example(id="x", messages=({"role": "user", "content": "q"},), response="r")
    return Rollout([ex] * len(prompts), [""] * len(prompts), prompts, completions, rewards, {})


def _padded(rows, width, pad, left):
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def _lora_params(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _our_update(policy, prompts, completions, rewards, lr, **grpo):
    cfg = AsrlGRPOConfig(
        num_generations=G,
        temperature=TEMPERATURE,
        max_new_tokens=C,
        lr=lr,
        lr_final_ratio=1.0,
        max_grad_norm=0.0,  # no clipping: TRL's _compute_loss does not clip either
        micro_batch_size=B,
        **grpo,
    )
    params = list(_lora_params(policy.model).values())
    opt = torch.optim.SGD(params, lr=lr)
    stats = grpo_update(
        policy, _rollout_of(prompts, completions, rewards), cfg, opt, random.Random(5)
    )
    return stats


def _trl_update(trainer, policy, prompts, completions, advantages, lr, steps, passes, mask):
    """TRL's procedure on one generation batch; ``steps``: each step's rows."""
    model = policy.model
    pad = policy.tokenizer.pad_token_id
    prompt_ids, prompt_mask = _padded(prompts, P, pad, left=True)
    completion_ids, completion_mask = _padded(completions, C, pad, left=False)
    completion_mask = completion_mask * mask.unsqueeze(1)  # mask_truncated_completions
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    with torch.no_grad():  # before any step, for the whole generation batch
        old, _, _ = trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, C)
    opt = torch.optim.SGD(list(_lora_params(model).values()), lr=lr)
    losses = []
    for _ in range(passes):
        for rows in steps:
            idx = torch.tensor(rows)
            inputs = {
                "prompt_ids": prompt_ids[idx],
                "prompt_mask": prompt_mask[idx],
                "completion_ids": completion_ids[idx],
                "completion_mask": completion_mask[idx],
                "advantages": advantages[idx],
                "old_per_token_logps": old[idx],
                # spans the generation batch; TRL rescales it by steps_per_generation
                "num_items_in_batch": completion_mask.sum(),
            }
            loss = trainer._compute_loss(model, inputs)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    return losses


def _snapshot(model):
    return {n: p.detach().clone() for n, p in _lora_params(model).items()}


def _max_diff(a, b):
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def _rel_update_diff(ours, theirs, start):
    """|ours' update - TRL's update| / |TRL's update| over all LoRA weights."""
    diff = sum(float(((ours[n] - theirs[n]) ** 2).sum()) for n in start) ** 0.5
    upd = sum(float(((theirs[n] - start[n]) ** 2).sum()) for n in start) ** 0.5
    return diff / upd


def _restore(model, snap):
    with torch.no_grad():
        for n, p in _lora_params(model).items():
            p.copy_(snap[n])


REWARDS = [1.0, 0.0, 0.3, 0.9]  # two groups of G=2, both informative


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_num_iterations_matches_trl(policy, tmp_path, loss_type):
    """steps_per_round=2, num_iterations=2: four steps, slices 0, 1, 0, 1, every ratio
    against the log-probs of the policy that sampled (TRL: steps_per_generation=2,
    num_iterations=2, one micro-batch per optimizer step)."""
    model = policy.model
    model.train()
    prompts, completions = _rows(policy)
    lr = 2.0  # large enough that later steps' ratios leave [1 - eps, 1 + eps]
    start = _snapshot(model)
    try:
        ours = _our_update(
            policy,
            prompts,
            completions,
            REWARDS,
            lr,
            loss_type=loss_type,
            steps_per_round=2,
            num_iterations=2,
        )
        ours_w = _snapshot(model)
        _restore(model, start)
        order = list(range(B))
        random.Random(5).shuffle(order)  # grpo_update's one shuffle of the round
        steps = [order[0::2], order[1::2]]
        trainer = _trl_grpo(
            policy,
            tmp_path,
            loss_type,
            0.0,
            0.2,
            None,
            False,
            per_device_train_batch_size=B // 2,
            steps_per_generation=2,
            num_iterations=2,
        )
        trainer.current_gradient_accumulation_steps = 1  # one micro-batch per step
        adv = group_advantages(torch.tensor(REWARDS), G)
        theirs = _trl_update(
            trainer,
            policy,
            prompts,
            completions,
            adv,
            lr,
            steps,
            2,
            torch.ones(B, dtype=torch.long),
        )
        theirs_w = _snapshot(model)
    finally:
        _restore(model, start)
        _zero(model)
    assert ours.steps == 4 and len(theirs) == 4
    assert ours.clip_ratio > 0  # clipping was exercised (against the sampling policy's logps)
    torch.testing.assert_close(
        torch.tensor(ours.losses), torch.tensor(theirs), rtol=1e-4, atol=1e-6
    )
    assert _max_diff(ours_w, start) > 1e-3
    assert _rel_update_diff(ours_w, theirs_w, start) < 1e-4


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_mask_truncated_completions_and_entropy_match_trl(policy, tmp_path, loss_type):
    """Rows 0 and 2 end with EOS, rows 1 and 3 hit max_new_tokens. TRL's masking
    (grpo_trainer.py, _generate_and_score_completions: ``is_truncated = ids[-1] not in
    eos_and_pad``, then ``completion_mask * ~is_truncated``) and its loss against ours
    (grpo.mask_truncated_completions); and TRL's ``entropy`` metric against our
    train/entropy on the same step."""
    model = policy.model
    model.train()
    prompts, completions = _rows(policy)
    eos = policy.tokenizer.eos_token_id
    completions = [c[:-1] + [eos] if i % 2 == 0 else c for i, c in enumerate(completions)]
    eos_and_pad = [eos, policy.tokenizer.pad_token_id]
    is_truncated = torch.tensor([ids[-1] not in eos_and_pad for ids in completions])  # TRL's
    assert is_truncated.tolist() == [False, True, False, True]
    lr = 0.5
    start = _snapshot(model)
    try:
        ours = _our_update(
            policy,
            prompts,
            completions,
            REWARDS,
            lr,
            loss_type=loss_type,
            steps_per_round=1,
            mask_truncated_completions=True,
        )
        ours_w = _snapshot(model)
        _restore(model, start)
        trainer = _trl_grpo(
            policy, tmp_path, loss_type, 0.0, 0.2, None, False, mask_truncated_completions=True
        )
        trainer.current_gradient_accumulation_steps = 1
        adv = group_advantages(torch.tensor(REWARDS), G)
        theirs = _trl_update(
            trainer,
            policy,
            prompts,
            completions,
            adv,
            lr,
            [list(range(B))],
            1,
            (~is_truncated).long(),
        )
        theirs_w = _snapshot(model)
        trl_entropy = trainer._metrics["train"]["entropy"][-1]
        # the same update without masking, to show that masking changed it
        _restore(model, start)
        _our_update(
            policy, prompts, completions, REWARDS, lr, loss_type=loss_type, steps_per_round=1
        )
        unmasked_w = _snapshot(model)
    finally:
        _restore(model, start)
        _zero(model)
    torch.testing.assert_close(
        torch.tensor(ours.losses), torch.tensor(theirs), rtol=1e-4, atol=1e-6
    )
    assert _rel_update_diff(ours_w, theirs_w, start) < 1e-4
    assert _rel_update_diff(unmasked_w, theirs_w, start) > 1e-2  # masking mattered
    assert ours.entropy_tokens == int(
        (~is_truncated).long() @ torch.tensor([len(c) for c in completions])
    )
    assert ours.entropy == pytest.approx(trl_entropy, rel=1e-4)


def test_entropy_matches_trl_per_token(policy, tmp_path):
    """Our entropies (from the loss's own log-softmax, both forward paths) against TRL's
    GRPOTrainer._get_per_token_logps_and_entropies on the same batch."""
    model = policy.model
    prompt_ids, prompt_mask, completion_ids, completion_mask, _ = _grpo_batch(policy)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    trainer = _trl_grpo(policy, tmp_path, "grpo", 0.0, 0.2, None, False)
    m = completion_mask.bool()
    with torch.no_grad():
        logps_t, ent_t, _ = trainer._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, C, compute_entropy=True
        )
        for fn in (completion_logps, shared_prompt_logps):
            logps, ent = fn(model, input_ids, attention_mask, C, TEMPERATURE, with_entropy=True)
            torch.testing.assert_close(logps[m], logps_t[m], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ent[m], ent_t[m], rtol=1e-4, atol=1e-5)
    assert float(ent_t[m].std()) > 0  # not a constant
