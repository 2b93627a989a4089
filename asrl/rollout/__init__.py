"""Rollout engines: how a policy samples completions, for GRPO rounds and evaluation alike.

``rollout.engine`` picks one (``asrl/config/schema.py``, ``RolloutConfig``):

* ``asrl`` (``slots.py``): continuous batching over a preallocated KV cache, in a decode copy
  of the model that holds the merged weights in the decode dtype. The default on a CPU and
  on a GPU without vLLM.
* ``hf`` (``asrl/model/generation.py``): one transformers forward per token on the training
  model itself. What a sharded (FSDP) model and an architecture the slot engine does not know
  use; the reference the others are tested against.
* ``vllm`` (``vllm_engine.py``): vLLM inside the training process, weights loaded into it
  before each round (TRL's colocate mode). An optional extra: ``pip install 'asrl[vllm]'``.
* ``auto``: vLLM on a GPU where it is installed, else ``asrl`` where it can decode the model,
  else ``hf``.

Every engine returns the same thing: the new token ids of each completion, cut after the
first end-of-turn token (kept), so the GRPO loss sees one format whatever decoded it.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

from asrl.config import ROLLOUT_ENGINES as ENGINES
from asrl.config import RolloutConfig
from asrl.errors import ConfigError
from asrl.model import generation
from asrl.model.loading import Policy
from asrl.rollout import slots


class Engine(Protocol):
    name: str
    sync_s: float  # seconds the last weight sync took (0 for an engine without a copy)

    def sync(self) -> float: ...

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> list[list[int]]: ...


class HFEngine:
    """The reference loop on the training model (nothing to sync: it decodes the model)."""

    name = "hf"
    sync_s = 0.0

    def __init__(self, policy: Policy):
        self.policy = policy

    def sync(self) -> float:
        return 0.0

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0, greedy=False,
                 seed=0, batch_size=None) -> list[list[int]]:  # fmt: skip
        return generation.generate(
            self.policy, prompts, max_new_tokens, temperature, top_p, greedy, seed, batch_size
        )


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose(policy: Policy, cfg: RolloutConfig) -> tuple[str, str]:
    """(engine name, why) for ``cfg.engine`` on this policy; raises ConfigError when the
    engine asked for cannot run here."""
    if cfg.engine not in ENGINES:
        raise ConfigError(f"rollout.engine: '{cfg.engine}' is not one of {', '.join(ENGINES)}")
    cannot = slots.supports(policy)
    if cfg.engine == "vllm":
        if not vllm_installed():
            raise ConfigError(
                "rollout.engine: vllm needs the vllm package, which is not installed: "
                "pip install 'asrl[vllm]' (or set rollout.engine: auto)"
            )
        if policy.sharded:
            raise ConfigError("rollout.engine: vllm cannot decode a sharded (FSDP) model")
        return "vllm", "asked for"
    if cfg.engine == "asrl":
        if cannot:
            raise ConfigError(f"rollout.engine: asrl cannot decode this model: {cannot}")
        return "asrl", "asked for"
    if cfg.engine == "hf":
        return "hf", "asked for"
    if policy.device.type == "cuda" and vllm_installed() and not policy.sharded:
        return "vllm", "auto: a GPU and vLLM installed"
    if cannot is None:
        return "asrl", "auto: continuous batching over a preallocated KV cache"
    return "hf", f"auto: the asrl engine cannot decode this model ({cannot})"


def attach(policy: Policy, cfg: RolloutConfig) -> str:
    """Build the engine ``cfg`` picks and keep it on ``policy``; returns a line for the log."""
    name, why = choose(policy, cfg)
    if name == "vllm":
        from asrl.rollout.vllm_engine import VLLMEngine

        policy.engine = VLLMEngine(policy, cfg)
    elif name == "asrl":
        policy.engine = slots.SlotEngine(policy, cfg.max_batch_tokens)
    else:
        policy.engine = HFEngine(policy)
    return f"rollout engine: {name} ({why})"


def generate(
    policy: Policy,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Complete each prompt with the policy's engine (``attach``; ``auto`` when none was
    attached), its weights synced first: the new token ids, cut after the first end-of-turn
    (kept); a completion that hit ``max_new_tokens`` has none."""
    if policy.engine is None:
        attach(policy, RolloutConfig())
    engine: Engine = policy.engine
    if prompts or policy.sharded:  # sharded: every process takes part in every step
        engine.sync()
    return engine.generate(prompts, max_new_tokens, temperature, top_p, greedy, seed, batch_size)
