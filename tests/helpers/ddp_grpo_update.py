"""Run by tests/test_distributed.py under 1 and 2 processes: GRPO updates on a fixed round.

Every process samples the same full round (same weights, same seed), gives it fixed random
rewards (a random tiny model earns none), then takes ``grpo_update`` steps, in which each
process computes its share of the micro-batches. The adapter is saved for comparison.
Under an FSDP launch the model is sharded first (every process then decodes in step);
under a DeepSpeed launch its ZeRO engine takes the steps.
"""

import random
import sys

import torch

from asrl.config import load_config
from asrl.data.records import parse_record
from asrl.data.synthetic import generate_records
from asrl.model.loading import load_policy
from asrl.parallel import distributed, zero
from asrl.phases.grpo_update import grpo_update
from asrl.phases.rollouts import rollout
from asrl.rewards.builtin import RewardSet
from asrl.train.checkpoint import gather_full
from asrl.train.state import seed_everything

out, loss_type = sys.argv[1], sys.argv[2]
d = distributed.init()
cfg = load_config(
    "configs/tiny.yaml",
    [
        f"grpo.loss_type={loss_type}",
        "grpo.beta=0.04",
        "grpo.steps_per_round=2",
        "grpo.micro_batch_size=2",
        "model.dtype=float64",  # see tests/test_distributed.py: summation order must not show
        "model.autocast=none",
    ],
)
seed_everything(0)
policy = load_policy(cfg.model, seed=0)
if d.sharded:
    policy.shard()
examples = [
    parse_record(r) for r in generate_records(4, seed=1, fmt=cfg.format.spec(), mix="paper")
]
rewards = RewardSet.from_config(cfg.reward, cfg.format.spec())
ro = rollout(policy, examples, cfg.grpo, rewards, seed=7, system_prompt=None)
g = torch.Generator().manual_seed(3)
ro.rewards = torch.rand(len(ro.rewards), generator=g).tolist()
opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
if d.zero_stage:  # a DeepSpeed launch: its engine steps
    opt = zero.wrap(policy.model, {"grpo": opt}, d.world)["grpo"]
stats = grpo_update(policy, ro, cfg.grpo, opt, random.Random(5))
full = gather_full(policy, {})[0] if policy.sharded else None  # sharded: all gather
if d.is_main:
    policy.model.save_pretrained(out, state_dict=full)
    print("losses", stats.losses, "norms", stats.grad_norms, "tokens", stats.tokens)

distributed.close()  # every process leaves the group together (see distributed.close)
