"""DeepSpeed ZeRO (stages 1 and 2) over the LoRA adapter: a DeepSpeed launch,
``accelerate launch --config_file configs/accelerate/zero2.yaml -m asrl train ...``.

What DeepSpeed owns, and what asrl keeps:

* DeepSpeed's engine reduces the adapter's gradients and takes the optimizer steps. ZeRO-1
  splits the AdamW moments and an fp32 master copy of the adapter across the processes;
  ZeRO-2 splits the gradients too, reducing them (reduce-scatter) in every backward. Every
  backward goes through ``engine.backward`` (``phases.common.backward``), every step through
  ``engine.step`` (``phases.common.clip_and_step``), which clips at the phase's
  max_grad_norm and skips a step whose gradient norm is not finite (DeepSpeed's check).
* asrl keeps the batching, the sharding of batches and rollouts, and the learning rates: the
  engine runs with ``managed_gradient_accumulation: false`` (each ``step`` is the boundary,
  after however many micro-batches that step had); its batch-size keys are placeholders.
* Two AdamW states over one adapter (SFT and GRPO, as in every run): ZeRO wraps one inner
  optimizer, so each phase has its own torch AdamW over ZeRO's flat fp32 partitions, and the
  phase's one is put in before its step (``ZeroEngine.use``).
* DeepSpeed averages gradients over the processes; asrl's losses are already divided by the
  global token count (their sum is the 1-process gradient), so each loss is multiplied by the
  number of processes before its backward.
* Every process makes the same backward calls, each reaching every adapter parameter
  (``Dist.lockstep_backward``: the dummy batches of the FSDP mode): ZeRO-2 reduces in every
  backward, and ZeRO-1's step fails on a process that has no gradient to reduce.
* Checkpoints hold the 1-process files: each phase's optimizer state is gathered from the
  partitions into torch AdamW's per-parameter form (``deepspeed.utils``'s
  ``safe_get_full_optimizer_state``) and split again on resume, so a ZeRO run resumes from a
  1-process checkpoint and the other way round, and ``asrl export`` reads them.

Refused, with the reason: ZeRO-3 (it splits the base model: the FSDP mode does that) and
offloading (its CPU optimizer is a compiled DeepSpeed op; an adapter's state is small).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from asrl.errors import ConfigError

SUPPORTED_STAGES = (1, 2)

# the zero_optimization keys a user's DeepSpeed config may set (the rest are asrl's)
TUNABLE = {
    "reduce_bucket_size",
    "allgather_bucket_size",
    "overlap_comm",
    "contiguous_gradients",
    "reduce_scatter",
    "round_robin_gradients",
}


def _user_config() -> dict[str, Any]:
    """The DeepSpeed config file the launch named (accelerate's deepspeed_config_file)."""
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not path or path.lower() == "none":
        return {}
    try:
        return json.loads(open(path).read())
    except (OSError, ValueError) as e:
        raise ConfigError(f"launch: cannot read the DeepSpeed config {path}: {e}") from e


def requested() -> tuple[int, dict[str, Any]]:
    """The ZeRO stage a DeepSpeed launch asked for and the zero_optimization keys asrl takes
    from the user's DeepSpeed config file. Refuses what this mode does not run."""
    user = _user_config().get("zero_optimization", {})
    stage = int(user.get("stage", os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2)))
    if stage == 3:
        raise ConfigError(
            "launch: DeepSpeed ZeRO-3 (splitting the base model across processes) is not run "
            "by asrl; its FSDP mode does that: accelerate launch --config_file "
            "configs/accelerate/fsdp.yaml. ZeRO-1 and ZeRO-2 (configs/accelerate/zero2.yaml) "
            "split the adapter's optimizer state and gradients."
        )
    if stage not in SUPPORTED_STAGES:
        raise ConfigError(
            f"launch: DeepSpeed ZeRO stage {stage}: asrl runs stages 1 and 2 "
            "(stage 0 is plain data parallelism: configs/accelerate/ddp.yaml)"
        )
    offload = [
        os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none"),
        os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none"),
        user.get("offload_optimizer", {}).get("device", "none"),
        user.get("offload_param", {}).get("device", "none"),
    ]
    if any(str(o).lower() not in ("none", "") for o in offload):
        raise ConfigError(
            "launch: DeepSpeed offloading is not supported: it steps with DeepSpeed's compiled "
            "CPU Adam, and the LoRA adapter's optimizer state is a few MB; set "
            "offload_optimizer_device and offload_param_device to none"
        )
    return stage, {k: v for k, v in user.items() if k in TUNABLE}


def import_deepspeed() -> Any:
    """The deepspeed module, ready for a CPU or GPU run (a clear error when not installed)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else it probes for GPU toolkits
    try:
        import deepspeed
        import deepspeed.ops
    except ImportError as e:
        raise ConfigError(
            "launch: a DeepSpeed launch needs the deepspeed package: pip install 'asrl[deepspeed]'"
        ) from e
    # On CPU its communication backend compiles a shared-memory all-reduce with the system's
    # C++ compiler (tens of seconds; an error without one) for inference; training never
    # uses it, so it is marked unavailable (the backend then uses gloo's, as for the rest).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # its ZeRO-2 all-gather uses a name torch deprecates: once per step, nothing to act on
    warnings.filterwarnings("ignore", ".*all_gather_into_tensor.* is deprecated", FutureWarning)
    return deepspeed


def _adamw_hparams(opt: torch.optim.Optimizer) -> dict[str, Any]:
    g = opt.param_groups[0]
    return {k: g[k] for k in ("lr", "betas", "eps", "weight_decay")}


class ZeroEngine:
    """A DeepSpeed ZeRO engine over a model's trainable parameters, with one AdamW state per
    phase (``optimizers``' keys). Built after any checkpoint was loaded into ``optimizers``
    (plain torch AdamWs over ``model``'s trainable parameters): their states move into
    ZeRO's partitions, and the adapter's current values become the fp32 master copy."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizers: dict[str, torch.optim.Optimizer],
        stage: int,
        world: int,
        zero_config: dict[str, Any] | None = None,
    ) -> None:
        deepspeed = import_deepspeed()
        from deepspeed.utils import logger

        logger.setLevel("WARNING")  # its per-init INFO lines drown the progress bars
        keys = list(optimizers)
        self.params = [p for g in optimizers[keys[0]].param_groups for p in g["params"]]
        states = {k: o.state_dict() for k, o in optimizers.items()}  # per parameter
        hparams = {k: _adamw_hparams(o) for k, o in optimizers.items()}
        config = {
            "train_micro_batch_size_per_gpu": 1,  # placeholders: asrl batches (see above)
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,
            "gradient_clipping": 1.0,  # set per step to the phase's max_grad_norm
            "zero_optimization": {"stage": stage, **(zero_config or {})},
            "zero_allow_untested_optimizer": True,  # torch's AdamW is the client optimizer
            "fp16": {"enabled": False},
            "bf16": {"enabled": False},  # precision is asrl's (model.autocast)
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }
        first = torch.optim.AdamW(self.params, **hparams[keys[0]])
        self.engine, self.zero, _, _ = deepspeed.initialize(
            model=model, optimizer=first, config=config
        )
        self.world = world
        # ZeRO pointed ``first`` at its flat fp32 partitions; the other phases' AdamWs too
        flat = [group["params"] for group in first.param_groups]
        self.inner = {keys[0]: first}
        for k in keys[1:]:
            self.inner[k] = torch.optim.AdamW([{"params": p} for p in flat], **hparams[k])
        self.active = keys[0]
        for k in keys:
            self.load_state_dict(k, states[k])

    def use(self, key: str) -> None:
        """Make phase ``key``'s AdamW the one ZeRO steps (and its states the ones it gathers)."""
        if key == self.active:
            return
        self.zero.optimizer = self.inner[key]
        self.active = key
        self._link()

    def _partitions(self) -> Iterator[tuple[list[torch.nn.Parameter], torch.Tensor]]:
        yield from zip(self.zero.bit16_groups, self.zero.single_partition_of_fp32_groups)

    def _link(self) -> None:
        """Point each parameter's view of the optimizer state at the active AdamW's (ZeRO
        links them after the first step; once linked, only to its own inner optimizer)."""
        from deepspeed.utils import lazy_init_hp_params_optimizer_state

        inner = self.inner[self.active]
        stepped = all(flat in inner.state for _, flat in self._partitions())
        for params, flat in self._partitions() if stepped else []:
            lazy_init_hp_params_optimizer_state(params, flat, inner.state)
        self.zero._hp_optimizer_states_linked = stepped  # else ZeRO links after its step

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed averages over the processes; asrl's shares are meant to be summed
        self.engine.backward(loss * self.world if self.world > 1 else loss, scale_wrt_gas=False)

    def step(self, key: str, max_norm: float) -> float:
        """Reduce (ZeRO-1), clip at ``max_norm`` (0: no clipping), step phase ``key``'s AdamW
        and clear the gradients; returns the pre-clip gradient norm (inf: step skipped)."""
        self.use(key)
        self.zero.clip_grad = max(max_norm, 0.0)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    def state_dict(self, key: str) -> dict[str, Any]:
        """Phase ``key``'s AdamW state in torch's per-parameter form (every process calls)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        self.use(key)
        inner = self.inner[key]
        group = {k: v for k, v in inner.param_groups[0].items() if k != "params"}
        out: dict[str, Any] = {
            "state": {},
            "param_groups": [{**group, "params": list(range(len(self.params)))}],
        }
        if not self.zero._hp_optimizer_states_linked:
            return out  # never stepped: no state yet, as in torch
        step = next(iter(inner.state.values()))["step"]
        for i, p in enumerate(self.params):
            out["state"][i] = {"step": step.clone()} | {
                name: safe_get_full_optimizer_state(p, name).detach().clone()
                for name in ("exp_avg", "exp_avg_sq")
            }
        return out

    def load_state_dict(self, key: str, sd: dict[str, Any]) -> None:
        """Load a per-parameter AdamW state (a 1-process checkpoint's) into phase ``key``'s
        partitions: each process keeps its part."""
        from deepspeed.utils import safe_set_full_optimizer_state

        self.use(key)
        inner = self.inner[key]
        for group in inner.param_groups:
            group.update({k: v for k, v in sd["param_groups"][0].items() if k != "params"})
        if not sd["state"]:
            return
        step = next(iter(sd["state"].values()))["step"]
        for _, flat in self._partitions():
            inner.state[flat] = {
                "step": step.clone(),
                "exp_avg": torch.zeros_like(flat),
                "exp_avg_sq": torch.zeros_like(flat),
            }
        self._link()
        for i, p in enumerate(self.params):
            st = sd["state"].get(i)  # none: torch never stepped it (no gradient); zeros here
            for name in ("exp_avg", "exp_avg_sq"):
                if st is not None:
                    safe_set_full_optimizer_state(p, st[name].to(p.device), name)


class PhaseOptimizer:
    """What a ZeRO run's ``Run.optimizers`` holds: one phase's view of the engine. It has what
    the loop uses of an optimizer (``param_groups`` for the learning rate, ``state_dict`` and
    ``load_state_dict`` for checkpoints, both collective); ``clip_and_step`` steps it."""

    def __init__(self, engine: ZeroEngine, key: str) -> None:
        self.engine, self.key = engine, key

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.engine.inner[self.key].param_groups

    def step_engine(self, max_norm: float) -> float:
        return self.engine.step(self.key, max_norm)

    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict(self.key)

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.engine.load_state_dict(self.key, sd)


_engine: ZeroEngine | None = None


def current() -> ZeroEngine | None:
    """The ZeRO engine of this run (None unless it was launched with DeepSpeed)."""
    return _engine


def wrap(
    model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer], world: int
) -> dict[str, PhaseOptimizer]:
    """Hand the optimizer steps to a DeepSpeed ZeRO engine configured as the launch asked
    (:func:`requested`); returns the optimizers to use."""
    global _engine
    stage, zero_config = requested()
    _engine = ZeroEngine(model, optimizers, stage, world, zero_config)
    return {k: PhaseOptimizer(_engine, k) for k in optimizers}
