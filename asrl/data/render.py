"""Chat-template rendering and response-only loss masks.

Prompts always go through the tokenizer's chat template. A training sequence is
``prompt tokens + response tokens + end-of-turn``; only the response part (and the
end-of-turn token, so the model learns to stop) carries loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from asrl.types import Example

IGNORE = -100  # label value cross-entropy skips


def chat_messages(example: Example, system_prompt: str | None = None) -> list[dict[str, str]]:
    msgs = list(example.messages)
    if system_prompt is not None and (not msgs or msgs[0]["role"] != "system"):
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    return msgs


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, example: Example, system_prompt: str | None = None
) -> list[int]:
    """Token ids of the chat-templated conversation, ending where the assistant reply starts."""
    text = tokenizer.apply_chat_template(
        chat_messages(example, system_prompt), tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class Tokenized:
    """One SFT sequence: ``ids[:n_prompt]`` is the prompt, the rest the response."""

    ids: list[int]
    n_prompt: int
    example_id: str

    @property
    def n_response(self) -> int:
        return len(self.ids) - self.n_prompt


def response_ids(tokenizer: PreTrainedTokenizerBase, example: Example) -> list[int]:
    """The reference response's token ids and the end of turn: what SFT trains on, and what a
    completion needs to generate to reach the reference's final answer."""
    ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, system_prompt: str | None = None
) -> Tokenized:
    p = prompt_ids(tokenizer, example, system_prompt)
    return Tokenized(p + response_ids(tokenizer, example), len(p), example.id)


class TokenizedCache:
    """Tokenizes each example once per run, keyed by its id.

    The train split only grows, so re-tokenizing all of it for every SFT phase would redo
    the same work each epoch (minutes at a million records). Over-length examples are
    remembered as dropped.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer, self.max_length, self.system_prompt = tokenizer, max_length, system_prompt
        # an int: the token count of an example longer than max_length (dropped)
        self._done: dict[str, Tokenized | int] = {}

    def __call__(self, examples: list[Example]) -> tuple[list[Tokenized], list[str]]:
        kept, dropped = [], []
        for ex in examples:
            if ex.id not in self._done:
                t = tokenize_example(self.tokenizer, ex, self.system_prompt)
                self._done[ex.id] = t if len(t.ids) <= self.max_length else len(t.ids)
            t = self._done[ex.id]
            if isinstance(t, int):
                dropped.append(ex.id)
            else:
                kept.append(t)
        return kept, dropped

    def length(self, example_id: str) -> int:
        """Tokens of an example this cache has seen (prompt + response + end of turn)."""
        t = self._done[example_id]
        return t if isinstance(t, int) else len(t.ids)


def response_lengths(tokenizer: PreTrainedTokenizerBase, examples: list[Example]) -> list[int]:
    """New tokens each example's reference takes to generate (:func:`response_ids`)."""
    return [len(response_ids(tokenizer, ex)) for ex in examples]


def tokenize_all(
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_length: int,
    system_prompt: str | None = None,
) -> tuple[list[Tokenized], list[str]]:
    """Tokenize examples, dropping those longer than ``max_length``; returns (kept, dropped ids)."""
    return TokenizedCache(tokenizer, max_length, system_prompt)(examples)


def collate(batch: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (prompt and padding masked)."""
    width = max(len(t.ids) for t in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, t in enumerate(batch):
        n = len(t.ids)
        ids[i, :n] = torch.tensor(t.ids)
        attn[i, :n] = 1
        labels[i, t.n_prompt : n] = torch.tensor(t.ids[t.n_prompt :])
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}
