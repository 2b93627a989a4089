"""vLLM as the rollout engine, inside the training process (TRL's colocate mode).

An optional extra (``pip install 'asrl[vllm]'``). The engine starts vLLM once on the base
model's directory, and before each round loads the policy's merged (base + LoRA) weights into
it (``sync``, timed as ``perf/weight_sync_s``), named as the plain model names them
(``slots.merged_weights``, TRL's mapping). Sampling parameters map one to one
(``sampling_kwargs``), and completions come back as new token ids cut after the first
end-of-turn (``completion_ids``), exactly what the built-in engines hand to the GRPO loss.

The pure parts (the mapping, the cut, the names) are tested without vLLM; the engine itself
where vLLM is installed (tests/external/test_vllm_engine.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from asrl.config import RolloutConfig
from asrl.errors import ConfigError
from asrl.model.loading import Policy, resolve_model_path
from asrl.rollout.slots import merged_weights

DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def sampling_kwargs(
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool,
    seed: int,
    eos_token_id: int,
) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments for one asrl decoding call: the same temperature,
    top-p and budget, greedy as temperature 0, no top-k / min-p / penalties (asrl applies
    none), the end-of-turn token as the stop (kept in the output), token ids only."""
    return {
        "n": 1,
        "temperature": 0.0 if greedy else float(temperature),
        "top_p": 1.0 if greedy else float(top_p),
        "top_k": 0,  # off
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "max_tokens": int(max_new_tokens),
        "stop_token_ids": [int(eos_token_id)],
        "ignore_eos": False,
        "skip_special_tokens": False,
        "detokenize": False,
        "seed": int(seed),
    }


def completion_ids(token_ids: Sequence[int], eos_token_id: int, max_new_tokens: int) -> list[int]:
    """vLLM's output ids as asrl's engines return them: cut after the first end-of-turn
    (kept), at most ``max_new_tokens``."""
    ids = list(token_ids)[:max_new_tokens]
    if eos_token_id in ids:
        ids = ids[: ids.index(eos_token_id) + 1]
    return ids


def vllm_dtype(policy: Policy) -> str:
    """The dtype vLLM runs in: the policy's autocast dtype, else its weights' dtype."""
    dtype = policy.autocast_dtype or next(policy.model.parameters()).dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"rollout.engine: vllm cannot run in {dtype}")
    return DTYPES[name]


def load_into(llm: Any, weights: list[tuple[str, Any]]) -> None:
    """Load checkpoint-format ``weights`` into an in-process vLLM's model. Newer vLLM has
    ``reload_weights`` (in place, re-running the kernel-format processing: on vLLM-CPU 0.32
    the plain ``load_weights`` of TRL's colocate path fails after start-up, 'Parameter'
    object has no attribute 'weight_loader'); older ones take ``model.load_weights``."""
    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    if hasattr(runner, "reload_weights"):
        runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    else:
        runner.model.load_weights(weights)


class VLLMEngine:
    name = "vllm"

    def __init__(self, policy: Policy, cfg: RolloutConfig, model_name: str | None = None):
        try:
            from vllm import LLM
        except ImportError as e:  # also a vLLM that is installed but cannot import here
            raise ConfigError(
                f"rollout.engine: vllm could not be imported ({e}); "
                "install it with pip install 'asrl[vllm]'"
            ) from e
        # one process: the engine core in this process, so its model is reachable for sync
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if policy.device.type == "cpu":  # vLLM-CPU takes ~20 GiB of KV cache by default,
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB; training needs the rest
        self.policy = policy
        path = model_name or policy.model.get_base_model().config.name_or_path
        kwargs: dict[str, Any] = dict(
            model=resolve_model_path(path),
            tokenizer=resolve_model_path(path),
            dtype=vllm_dtype(policy),
            enable_prefix_caching=True,  # the G rows of a question share its prompt's cache
            seed=0,
        )
        if policy.device.type == "cuda":
            kwargs["gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
        else:
            # vLLM-CPU 0.32 fails on a seeded request whose prompt is prefilled in chunks
            # ("CPU Generator does not use offset", a 32 x 8 round at its default 4,096 tokens
            # per step): a step budget that holds a whole round's prompts avoids the chunking
            kwargs["max_num_batched_tokens"] = 65_536
        self.llm = LLM(**kwargs)
        self.sync_s = 0.0

    def sync(self) -> float:
        """Load the policy's current merged weights into vLLM; returns seconds."""
        import torch

        start = time.perf_counter()
        with torch.no_grad(), self.policy.merged():
            load_into(self.llm, list(merged_weights(self.policy)))
        self.llm.reset_prefix_cache()  # cached prompt keys belong to the old weights
        self.sync_s = time.perf_counter() - start
        return self.sync_s

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> list[list[int]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        eos = self.policy.tokenizer.eos_token_id
        kw = sampling_kwargs(max_new_tokens, temperature, top_p, greedy, seed, eos)
        # one seed per row (seed, seed + 1, ...): rows of a group must not share a stream
        params = [SamplingParams(**{**kw, "seed": kw["seed"] + i}) for i in range(len(prompts))]
        outs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False
        )
        return [completion_ids(o.outputs[0].token_ids, eos, max_new_tokens) for o in outs]
