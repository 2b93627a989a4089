"""One record schema for every source: parse, validate and identify a record.

Accepted shapes (the contract in DESIGN.md):

* ``{"id"?, "prompt": str, "response": str, "answer"?, "type"?}``
* ``{"id"?, "messages": [...], "response": str, ...}`` — messages before the reply
* ``{"messages": [..., {"role": "assistant", ...}]}`` — TRL conversational: last turn is the reply
* ``{"prompt": str | [...], "completion": str | [...]}`` — TRL prompt-completion
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from asrl.types import Example

ROLES = ("system", "user", "assistant", "tool")
SPLITS = ("train", "val", "test")
MAX_CHARS = 20_000  # prompt + response; longer records are quarantined, not trained on


class RecordError(ValueError):
    """A record that cannot be used; the message is the quarantine reason."""


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RecordError(f"'{field}' must be a string or a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise RecordError(f"'{field}[{i}]' must be an object with a string 'content'")
        if m.get("role") not in ROLES:
            raise RecordError(f"'{field}[{i}].role' must be one of {', '.join(ROLES)}")
        # the canonical role string, not the decoded copy: one object shared by 1M records
        out.append({"role": ROLES[ROLES.index(m["role"])], "content": m["content"]})
    return out


def _text(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        content = value[-1].get("content")
        if isinstance(content, str):
            return content
    raise RecordError(f"'{field}' must be a string")


def content_id(messages: list[dict[str, str]], response: str) -> str:
    """Identity of a record without an id: a hash of its content."""
    blob = json.dumps([messages, response], sort_keys=True, ensure_ascii=False)
    return "sha-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


def parse_record(obj: Any) -> Example:
    """Validate one decoded JSON value and normalise it to an :class:`Example`."""
    if not isinstance(obj, dict):
        raise RecordError("a record must be a JSON object")
    if "messages" in obj:
        messages = _messages(obj["messages"], "messages")
        if "response" in obj:
            response = _text(obj["response"], "response")
        elif messages[-1]["role"] == "assistant":
            response, messages = messages[-1]["content"], messages[:-1]
        else:
            raise RecordError("'messages' has no final assistant turn and there is no 'response'")
    elif "prompt" in obj:
        messages = _messages(obj["prompt"], "prompt")
        if "response" in obj:
            response = _text(obj["response"], "response")
        elif "completion" in obj:
            response = _text(obj["completion"], "completion")
        else:
            raise RecordError("missing 'response' (or 'completion')")
    else:
        raise RecordError("missing 'prompt' or 'messages'")
    if not any(m["role"] == "user" for m in messages):
        raise RecordError("the prompt has no user turn")
    if not response.strip():
        raise RecordError("empty response")
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise RecordError("'answer' must be a string or a number")
    rtype = obj.get("type", "default")
    if not isinstance(rtype, str):
        raise RecordError("'type' must be a string")
    rid = obj.get("id")
    if rid is None:
        rid = content_id(messages, response)
    elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise RecordError("'id' must be a string or an integer")
    known = {"id", "prompt", "messages", "response", "completion", "answer", "type"}
    extra = {k: v for k, v in obj.items() if k not in known}
    return Example(
        id=str(rid),
        messages=tuple(messages),
        response=response,
        answer=None if answer is None else str(answer),
        type=sys.intern(rtype),  # a handful of distinct types across millions of records
        extra=extra,
    )


def parse_line(line: bytes) -> Example:
    """Decode and parse one JSONL line (bytes, without its newline)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"not UTF-8 ({e.reason} at byte {e.start})") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"invalid JSON: {e.msg} at column {e.colno}") from e
    return parse_record(obj)


def parse_row(row: dict[str, Any]) -> Example:
    """Parse one database row (column -> value; NULL columns left out).

    Text arrives as bytes so a non-UTF-8 cell is one bad record, not a failed query; the
    ``messages`` column holds the message list as JSON text.
    """
    obj: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(
                    f"column '{key}' is not UTF-8 ({e.reason} at byte {e.start})"
                ) from e
        obj[key] = value
    if isinstance(obj.get("messages"), str):
        try:
            obj["messages"] = json.loads(obj["messages"])
        except json.JSONDecodeError as e:
            raise RecordError(f"column 'messages' is not JSON: {e.msg} at column {e.colno}") from e
    return parse_record(obj)


def record_chars(ex: Example) -> int:
    """Characters of prompt (every turn) plus response."""
    return sum(len(m["content"]) for m in ex.messages) + len(ex.response)


def check_length(ex: Example, max_chars: int | None = MAX_CHARS) -> Example:
    """Reject a record too long to be worth tokenizing (a pasted log, a runaway generator)."""
    if max_chars is not None and (n := record_chars(ex)) > max_chars:
        raise RecordError(f"too long: {n} characters of prompt + response (max {max_chars})")
    return ex


def split_of(record_id: str, fractions: list[float] | tuple[float, ...]) -> str:
    """The split of a record, from its identity alone: it never moves as the data grows.

    (The paper re-split the whole dataset when it grew, which moves held-out examples into
    train; a hash of the id keeps every record where it was first put.)
    """
    h = int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if h < edge:
            return name
    return SPLITS[-1]
