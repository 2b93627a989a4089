"""Does torch FSDP2 (``fully_shard``) work for asrl's LoRA model on CPU processes over gloo?

    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 \\
        benchmarks/fsdp_spike.py [tiny-random-llama | smollm2-135m] [--inference-mode] [--uneven] [--avg]

Each process prints OK/FAIL per check (README, "Several processes or GPUs", has the results):
sharding, greedy decoding with our KV-cached loop against the unsharded model, LoRA
gradients from half batches against the full-batch gradients, an AdamW step on the sharded
parameters, a full state dict on rank 0 and decoding speed. Known failures, on request:
``--inference-mode`` decodes first under ``torch.inference_mode`` as asrl does (the backward
then fails), ``--uneven`` has one rank decode fewer steps than the other (it waits for gloo's
30 s timeout), ``--avg`` keeps FSDP2's default, which averages the shares' gradients (half the
1-process gradient here: the loss is already divided by the global token count).
"""

from __future__ import annotations

import datetime
import sys
import time
import traceback

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from asrl.model.generation import generate
from asrl.model.loading import load_policy

MODEL = next((a for a in sys.argv[1:] if not a.startswith("--")), "tiny-random-llama")
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
RANK, WORLD = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)
PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
B, T = 4, 24


def say(msg: str) -> None:
    print(f"[rank {RANK}] {msg}", flush=True)


def check(name: str, fn) -> None:
    t = time.perf_counter()
    try:
        got = fn()
        say(f"OK   {name} ({time.perf_counter() - t:.2f}s) {'' if got is None else got}")
    except Exception as e:
        say(f"FAIL {name}: {type(e).__name__}: {str(e)[:300]}")
        traceback.print_exc(limit=2)


def decode(policy, prompts, merge: bool, n: int = 8) -> list[list[int]]:
    """Our decode loop; once sharded under no_grad (inference_mode breaks FSDP2's next
    backward). Not through asrl.parallel.distributed: each process decodes alone (see --uneven)."""
    policy.merge_for_generation = merge
    return generate(policy, prompts, max_new_tokens=n, greedy=True)


policy = load_policy(MODEL, seed=0)
model = policy.model
for name, p in model.named_parameters():  # LoRA B starts at zero: make the adapter non-trivial
    if "lora_B" in name:
        torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
ids = torch.randint(5, 1000, (B, T), generator=torch.Generator().manual_seed(0))


def loss_on(rows: list[int]) -> torch.Tensor:
    logits = model(input_ids=ids[rows]).logits[:, :-1].float()
    logp = logits.log_softmax(-1).gather(-1, ids[rows][:, 1:, None]).squeeze(-1)
    return -logp.sum() / (B * (T - 1))  # divided by the global token count: shares sum


# the 1-process references, computed before sharding (same on every rank)
t0 = time.perf_counter()
decode(policy, PROMPTS, merge=False, n=12)
say(f"unsharded decode 3 x 12 tokens: {time.perf_counter() - t0:.2f}s")
mine = PROMPTS[RANK::WORLD]
ref_tokens = decode(policy, mine, merge=False)
loss_on(list(range(B))).backward()
trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
ref_grads = {n: p.grad.clone() for n, p in trainable.items()}
ref = {n: torch.nn.Parameter(p.detach().clone()) for n, p in trainable.items()}
for n, p in ref.items():
    p.grad = ref_grads[n]
torch.optim.AdamW(list(ref.values()), lr=1e-3).step()
for p in trainable.values():
    p.grad = None

layers = model.base_model.model.model.layers
for module in [*layers, model]:
    fully_shard(module)
    if "--avg" not in sys.argv:
        module.set_force_sum_reduction_for_comms(True)  # else PREMUL_SUM: gloo has none
        module.set_gradient_divide_factor(1.0)  # sum the shares, as the loss is global
trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}  # now DTensors
say(f"sharded: parameters are {type(next(model.parameters())).__name__}")
if "--inference-mode" in sys.argv:  # the first unshard under inference_mode
    policy.merge_for_generation = False
    generate(policy, mine, max_new_tokens=4, greedy=True)
policy.sharded = True  # generate() now decodes under no_grad (asrl's Policy.shard sets it)

check("greedy decode, unmerged, = unsharded", lambda: decode(policy, mine, False) == ref_tokens)
check("greedy decode, merged, = unsharded", lambda: decode(policy, mine, True) == ref_tokens)


def grads() -> str:
    loss_on(list(range(RANK, B, WORLD))).backward()
    diff = max(
        float((p.grad.full_tensor() - ref_grads[n]).abs().max()) for n, p in trainable.items()
    )
    return f"max |grad - 1-process grad| = {diff:.3g}"


def step() -> str:
    torch.optim.AdamW(list(trainable.values()), lr=1e-3).step()
    diff = max(float((p.full_tensor() - ref[n]).abs().max()) for n, p in trainable.items())
    return f"max |param - 1-process param| = {diff:.3g} (Adam's first step amplifies rounding)"


def state_dict() -> str:
    sd = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return f"{sum('lora_' in k for k in sd)} LoRA tensors on this rank"


def speed() -> str:
    t = time.perf_counter()
    decode(policy, PROMPTS, merge=False, n=12)
    return f"sharded decode 3 x 12 tokens: {time.perf_counter() - t:.2f}s"


def uneven() -> None:  # as when one rank's rows all reach end-of-turn first
    decode(policy, mine, merge=False, n=8 if RANK == 0 else 3)
    dist.barrier()


check("forward/backward on half batches", grads)
check("AdamW step on sharded parameters", step)
check("full state dict", state_dict)
check("speed", speed)
if "--uneven" in sys.argv:
    check("ranks decode different numbers of steps", uneven)
dist.destroy_process_group()
