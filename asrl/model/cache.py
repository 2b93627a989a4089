"""The KV cache argument of a model's forward, across transformers versions."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


@functools.cache
def _cache_argument(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword argument that passes a KV cache back into ``model``: ``cache`` in the
    transformers versions that renamed it (passing the old ``past_key_values`` warns there),
    ``past_key_values`` in older ones."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    return {_cache_argument(type(base)): cache}


def kv_cache(out: Any) -> Any:
    """The KV cache of a forward's output (``use_cache=True``), under either name; reading
    the old name where it was renamed warns."""
    return out["cache"] if "cache" in out else out["past_key_values"]
