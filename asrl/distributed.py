"""Data-parallel training across processes: ``accelerate launch -m asrl train ...``.

Hugging Face accelerate starts the processes and sets up the process group (gloo on CPU,
NCCL on GPUs); this module holds the few collectives the loop needs. Every process holds the
whole (small) dataset and the same RNG streams, so all of them agree on which examples make
each optimizer step; each then computes its share:

* SFT: every batch is split across processes (``shard``); the loss is still divided by the
  global token count, so the all-reduced (summed) gradient equals the 1-process gradient.
* GRPO: each process samples the groups of its share of the questions and scores them; the
  rollouts are gathered, so every process sees the whole round (group statistics and
  advantages are the 1-process ones), then each step's micro-batches are split across
  processes.
* Evaluation: examples are split, outputs gathered in order.
* One gradient all-reduce per optimizer step (in ``clip_and_step``), which also agrees on the
  loss (so a non-finite step is skipped everywhere) and on a pending SIGTERM.
* Only the main process writes metrics, samples, checkpoints and the summary.

With one process every function here is a no-op, and nothing imports torch.distributed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from asrl.config import ConfigError

T = TypeVar("T")


class Dist:
    """This process's place in the group: ``rank`` of ``world``; ``is_main`` is rank 0."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def quiet(self) -> bool | None:
        """tqdm's ``disable``: progress bars on the main process only (None: if a terminal)."""
        return None if self.is_main else True

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share: items rank, rank + world, ... (all of them with one process)."""
        return list(items[self.rank :: self.world])

    def unshard(self, shares: list[list[T]]) -> list[T]:
        """Inverse of :meth:`shard` given every process's share (from :meth:`gather`)."""
        out: list[T] = []
        for i in range(max((len(s) for s in shares), default=0)):
            out += [s[i] for s in shares if i < len(s)]
        return out

    def gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, in rank order (picklable objects)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """The main process's ``obj``, on every process."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over processes of a few floats (one collective)."""
        if not self.active:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients over processes in one flat buffer (what DDP does per bucket).

        A parameter without a gradient on this process (its share was empty) counts as zero;
        one without a gradient on every process keeps none (the optimizer skips it, as it
        would with one process).
        """
        if not self.active:
            return
        parts = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params
        ]
        has = torch.tensor([float(p.grad is not None) for p in params], dtype=parts[0].dtype)
        flat = torch.cat([*parts, has.to(parts[0].device)])
        torch.distributed.all_reduce(flat)
        offset = 0
        for i, p in enumerate(params):
            n = p.numel()
            got = flat[-len(params) + i] > 0
            p.grad = flat[offset : offset + n].view_as(p).clone() if got else None
            offset += n

    def broadcast_params(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Copy the main process's values of ``params`` to every process."""
        if self.active:
            for p in params:
                torch.distributed.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


_current = Dist()


def current() -> Dist:
    """The process group of this run (a 1-process ``Dist`` unless launched with several)."""
    return _current


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


SHARDED_REFUSAL = {
    "ACCELERATE_USE_FSDP": (
        "FSDP was asked for (accelerate launch --use_fsdp / an FSDP config), but asrl runs "
        "data-parallel only: every process holds the whole model. Sharding the frozen base "
        "(FSDP2 fully_shard) computes the same LoRA gradients over gloo, but every forward "
        "call then all-gathers weights, so all processes must make the same forward calls: "
        "asrl's decode loop stops when its own rows end (a rank that stops early deadlocks "
        "the others), shares of a batch may be empty, decoding runs in inference_mode (FSDP2 "
        "then fails the next backward), and checkpoints are written by one process. See "
        "README, 'Several processes or GPUs'. Drop --use_fsdp (configs/accelerate/ddp.yaml); "
        "with LoRA on <=1B-parameter models the replicated base fits wherever training does."
    ),
    "ACCELERATE_USE_DEEPSPEED": (
        "DeepSpeed was asked for (accelerate launch --use_deepspeed / a DeepSpeed config), but "
        "asrl runs data-parallel only, with its own gradient all-reduce (ZeRO would shard the "
        "optimizer state of a LoRA adapter that is a few MB). Drop --use_deepspeed "
        "(configs/accelerate/ddp.yaml)."
    ),
}


def refuse_sharded_launch() -> None:
    """Fail clearly on an FSDP / DeepSpeed launch instead of running as plain DDP.

    accelerate launch --use_fsdp sets ACCELERATE_USE_FSDP, but on CPU processes accelerate
    reports MULTI_CPU (and its Accelerator silently wraps the model in DDP), so the
    launch's distributed type alone does not reveal what the user asked for.
    """
    for var, why in SHARDED_REFUSAL.items():
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise ConfigError(f"launch: {why}")


def init() -> Dist:
    """Join the process group ``accelerate launch`` (or torchrun) set up, if any."""
    global _current
    if launched_world_size() <= 1:
        _current = Dist()
        return _current
    refuse_sharded_launch()
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    # no GPU: accelerate joins the processes over gloo only when told it is a CPU run
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        raise ConfigError(
            f"launch: asrl supports data-parallel (DDP-style) launches only, not {state.distributed_type}"
            "; use configs/accelerate/ddp.yaml or `accelerate launch --num_processes N`"
        )
    _current = Dist(state.process_index, state.num_processes)
    return _current


def device_for(d: Dist, requested: str) -> str:
    """With several processes on GPUs, each process takes its own device."""
    if d.active and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', d.rank))}"
    return requested
