"""The slot engine on a GPU (bf16, 64 prompts x 8 completions, 96 new tokens) against the
per-token reference loop, on random weights of SmolLM2-135M's and Qwen3-0.6B's shapes (nothing
downloaded). Run by benchmarks/device_check.sh; prints one line per model and engine."""

from __future__ import annotations

import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from asrl.model import generation
from asrl.model.loading import Policy, load_tokenizer
from asrl.rollout.slots import SlotEngine

SHAPES = {
    "smollm2-135m": LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
    ),
    "qwen3-0.6b": Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
    ),
}  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    dev = torch.device("cuda")
    tok = load_tokenizer("smollm2-135m")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 40000, (int(n),), generator=g).tolist()
               for n in torch.randint(30, 90, (64,), generator=g)]  # fmt: skip
    rows = [p for p in prompts for _ in range(8)]
    for name, cfg in SHAPES.items():
        cfg.pad_token_id, cfg.eos_token_id = tok.pad_token_id, tok.eos_token_id
        run_model(name, cfg, tok, rows, dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_model(name, cfg, tok, rows, dev) -> None:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(dev)
    model = get_peft_model(base, LoraConfig(r=32, lora_alpha=64, target_modules=TARGETS))
    policy = Policy(model, tok, dev, torch.bfloat16)
    engine = SlotEngine(policy)
    readers = {
        "asrl": lambda s: engine.generate(rows, 96, 0.7, 0.95, seed=s),
        "ref": lambda s: generation.generate(policy, rows, 96, 0.7, 0.95, seed=s),
    }
    for label, fn in readers.items():
        times = []
        for rep in range(3 if label == "asrl" else 1):
            sync = engine.sync() if label == "asrl" else 0.0
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn(rep)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        n = sum(map(len, out))
        print(f"{name:13} {label:5} 64x8: {n} tokens, best {min(times):.2f} s = "
              f"{n / min(times):.0f} tok/s (n={len(times)}), sync {sync:.2f} s, peak "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
