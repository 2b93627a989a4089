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

Sharded (an FSDP launch: ``ACCELERATE_USE_FSDP``): the same, but the base model is split
across processes with torch FSDP2 (``shard_model``): every forward call all-gathers each
decoder layer's weights and every backward reduce-scatters its LoRA gradients. So every
process must make the same forward and backward calls: decoding runs until all processes'
rows are done (``all_done``), a process whose share of a batch is empty runs a dummy batch
whose loss is multiplied by zero, and checkpoints are gathered by all processes
(``checkpoint.gather_full``). FSDP sums the gradients itself, so ``all_reduce_grads`` leaves them alone.

DeepSpeed ZeRO-1/2 (a DeepSpeed launch: ``ACCELERATE_USE_DEEPSPEED``): the base model is
replicated, DeepSpeed's engine reduces the adapter's gradients and steps (``asrl.parallel.zero``);
every process makes the same backward calls (``lockstep_backward``), checkpoints are gathered.

With one process every function here is a no-op, and nothing imports torch.distributed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from asrl.errors import ConfigError

T = TypeVar("T")


class Dist:
    """This process's place in the group: ``rank`` of ``world``; ``is_main`` is rank 0."""

    def __init__(
        self, rank: int = 0, world: int = 1, sharded: bool = False, zero_stage: int = 0
    ) -> None:
        self.rank, self.world = rank, world
        self.sharded = sharded and world > 1  # FSDP2: the base model split across processes
        self.zero_stage = zero_stage if world > 1 else 0  # DeepSpeed ZeRO-1/2 (asrl.parallel.zero)

    @property
    def lockstep_backward(self) -> bool:
        """Every process must make the same backward calls, each reaching every trainable
        parameter: FSDP and ZeRO-2 communicate in each backward, ZeRO-1 reduces every
        parameter's gradient in its step (a process with less to do runs dummy batches)."""
        return self.sharded or self.zero_stage > 0

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

    def all_done(self, done: bool) -> bool:
        """True when ``done`` is true on every process (one small all-reduce)."""
        if not self.active:
            return done
        return self.sum([0.0 if done else 1.0])[0] == 0

    def max(self, value: int) -> int:
        """The largest ``value`` over processes."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def padded_chunks(self, items: Sequence[T], size: int) -> list[list[T]]:
        """``items`` in chunks of ``size``, then empty chunks until every process has as
        many (one small all-reduce; sharded runs take one forward per chunk)."""
        chunks = [list(items[i : i + size]) for i in range(0, len(items), size)]
        return chunks + [[] for _ in range(self.max(len(chunks)) - len(chunks))]

    def padded_shard(self, items: Sequence[T]) -> list[T | None]:
        """:meth:`shard`, padded with None so every process gets as many entries.

        Sharded runs take one forward (and backward) per entry; a None entry is a dummy
        batch that contributes nothing but takes part in FSDP's collectives.
        """
        mine: list[T | None] = list(self.shard(items))
        if self.lockstep_backward:
            mine += [None] * (-(-len(items) // self.world) - len(mine))
        return mine

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients over processes in one flat buffer (what DDP does per bucket).

        A parameter without a gradient on this process (its share was empty) counts as zero;
        one without a gradient on every process keeps none (the optimizer skips it, as it
        would with one process). Sharded: FSDP's backward has already summed them; ZeRO:
        DeepSpeed's engine reduces them.
        """
        if not self.active or self.sharded or self.zero_stage:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        has = torch.tensor([float(p.grad is not None) for p in params], dtype=grads[0].dtype)
        *summed, got = self.sum_tensors([*grads, has.to(grads[0].device)])
        for p, g, any_grad in zip(params, summed, got.tolist()):
            p.grad = g.clone() if any_grad > 0 else None

    def sum_tensors(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Element-wise sums over processes of a few tensors (one collective)."""
        if not self.active:
            return list(tensors)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        return [
            part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)
        ]

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


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched); it outlives close()."""
    return int(os.environ.get("RANK", "0"))


def _env_flag(var: str) -> bool:
    return os.environ.get(var, "").lower() in ("1", "true", "yes")


def init() -> Dist:
    """Join the process group ``accelerate launch`` (or torchrun) set up, if any.

    The launch's kind comes from the launcher's variables: on CPU processes accelerate reports
    FSDP and DeepSpeed launches as MULTI_CPU, so its distributed type alone does not tell.
    A DeepSpeed launch is checked (asrl.parallel.zero.requested) before any process group is joined.
    """
    global _current
    if launched_world_size() <= 1:
        _current = Dist()
        return _current
    zero_stage = 0
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        from asrl.parallel import zero

        zero_stage = zero.requested()[0]
        zero.import_deepspeed()
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    # no GPU: accelerate joins the processes over gloo only when told it is a CPU run
    state = PartialState(cpu=not torch.cuda.is_available())
    # An FSDP launch: on GPUs accelerate reports FSDP; for CPU processes its FSDP wrapping
    # does nothing (it reports MULTI_CPU). asrl never hands its model to an Accelerator
    # anyway: the launcher's variable says sharding was asked for, shard_model does it.
    sharded = _env_flag("ACCELERATE_USE_FSDP")
    allowed = [DistributedType.MULTI_CPU, DistributedType.MULTI_GPU]
    allowed += [DistributedType.FSDP] if sharded else []
    allowed += [DistributedType.DEEPSPEED] if zero_stage else []
    if state.distributed_type not in allowed:
        raise ConfigError(
            f"launch: asrl supports data-parallel launches (replicated, FSDP-sharded or "
            f"DeepSpeed ZeRO-1/2) only, not {state.distributed_type}; use "
            "configs/accelerate/ddp.yaml, fsdp.yaml or zero2.yaml"
        )
    _current = Dist(state.process_index, state.num_processes, sharded, zero_stage)
    return _current


def close(clean: bool = True) -> None:
    """Leave the process group: after a clean run every process first waits for the others,
    then the group is destroyed. A process that exits with its group alive, while another
    still works, can abort at interpreter exit: gloo's worker threads still hold work
    objects whose tensors are freed after Python is torn down ("terminate called without an
    active exception", SIGABRT; pytorch/pytorch#179291). A failed run skips the wait: the
    other processes may be gone."""
    global _current
    if _current.active and torch.distributed.is_initialized():
        if clean:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    _current = Dist()


def shard_model(model: torch.nn.Module) -> None:
    """Shard a (PEFT) model across the processes with FSDP2, in place.

    Each decoder layer is its own unit (all-gathered for its forward, its LoRA gradients
    reduce-scattered in its backward), the rest (embeddings, tied LM head, final norm) is the
    root unit. Our losses are already divided by the global token count, so the shares'
    gradients are summed, not averaged (and gloo has no PREMUL_SUM for averaging).
    ``FSDP_RESHARD_AFTER_FORWARD=false`` (the accelerate config's fsdp_reshard_after_forward)
    keeps layers gathered from forward to backward: less communication, more memory.
    """
    from torch.distributed.fsdp import fully_shard

    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_types = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_types]
    if not layers:
        raise ConfigError(
            f"launch: FSDP: cannot find the decoder layers of {type(base).__name__} "
            "(its _no_split_modules names none); use data parallelism (configs/accelerate/ddp.yaml)"
        )
    for module in [*layers, model]:
        fully_shard(module, reshard_after_forward=reshard if module is not model else None)
        module.set_force_sum_reduction_for_comms(True)
        module.set_gradient_divide_factor(1.0)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded (DTensor) one, gathered (all processes must call)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def device_for(d: Dist, requested: str) -> str:
    """With several processes on GPUs, each process takes its own device."""
    if d.active and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', d.rank))}"
    return requested
