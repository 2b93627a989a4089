"""One record schema for every source: parse, validate and identify a record.

Accepted shapes (the data contract, written out in docs/data.md):

* ``{"id"?, "prompt": str, "response": str, "answer"?, "type"?}``
* ``{"id"?, "messages": [...], "response": str, ...}`` — messages before the reply
* ``{"messages": [..., {"role": "assistant", ...}]}`` — TRL conversational: last turn is the reply
* ``{"prompt": str | [...], "completion": str | [...]}`` — TRL prompt-completion
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from typing import Any

from asrl.errors import RecordError
from asrl.types import Example

ROLES = ("system", "user", "assistant", "tool")
SPLITS = ("train", "val", "test")
MAX_CHARS = 20_000  # prompt + response; longer records are quarantined, not trained on
# What one input line may cost before it is parsed. A longer line is skipped while reading
# (never held whole) and quarantined; the default of ``data.max_line_bytes``.
MAX_LINE_BYTES = 1 << 20
MAX_DEPTH = 64  # JSON nesting levels ([ and {): a record needs 3, json.loads recurses on each
BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark, as Windows editors save it: accepted at offset 0
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \ud800-\udfff: maybe a lone half


def _unicode(text: str, field: str) -> str:
    """``text`` if it can be written as UTF-8 (a lone surrogate, from a JSON escape such
    as \\ud800 or a database row, cannot: tokenizers and our own files would fail on it)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise RecordError(
                f"'{field}' holds a lone surrogate ({text[e.start]!a} at character {e.start}), "
                "which is not valid Unicode"
            ) from e
    return text


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    if isinstance(value, str) and field != "messages":  # a plain prompt: one user turn
        return [{"role": "user", "content": _unicode(value, field)}]
    if not isinstance(value, list) or not value:
        if field == "messages":
            raise RecordError("'messages' must be a non-empty list of {role, content} objects")
        raise RecordError(f"'{field}' must be a string or a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise RecordError(f"'{field}[{i}]' must be an object with a string 'content'")
        if m.get("role") not in ROLES:
            raise RecordError(f"'{field}[{i}].role' must be one of {', '.join(ROLES)}")
        # the canonical role string, not the decoded copy: one object shared by 1M records
        content = _unicode(m["content"], f"{field}[{i}].content")
        out.append({"role": ROLES[ROLES.index(m["role"])], "content": content})
    return out


def _text(value: Any, field: str) -> str:
    if isinstance(value, str):
        return _unicode(value, field)
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        content = value[-1].get("content")
        if isinstance(content, str):
            return _unicode(content, field)
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
    if not any(m["content"].strip() for m in messages if m["role"] == "user"):
        raise RecordError("empty prompt (the user turn has no text)")
    if not response.strip():
        raise RecordError("empty response")
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise RecordError("'answer' must be a string or a number")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise RecordError(f"'answer' must be a finite number, got {answer}")
    if isinstance(answer, str):
        _unicode(answer, "answer")
    rtype = obj.get("type", "default")
    if not isinstance(rtype, str):
        raise RecordError("'type' must be a string")
    _unicode(rtype, "type")
    rid = obj.get("id")
    if rid is None:
        rid = content_id(messages, response)
    elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise RecordError("'id' must be a string or an integer")
    elif isinstance(rid, str):
        _unicode(rid, "id")
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


def nesting_depth(data: bytes) -> int:
    """How deep ``[`` and ``{`` nest outside JSON strings: a few vectorised passes over the
    bytes (milliseconds for a 1 MiB line), no parsing.

    A line with few brackets cannot nest deeply and is not scanned at all (returns 0).
    """
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return 0  # at most MAX_DEPTH: nothing to measure
    import numpy as np  # only for the rare line with many brackets

    b = np.frombuffer(data, dtype=np.uint8)
    idx = np.arange(len(b), dtype=np.int64)
    # a quote is escaped when an odd run of backslashes precedes it
    backslash = b == ord("\\")
    last_other = np.maximum.accumulate(np.where(backslash, -1, idx))  # last non-backslash
    run_before = np.empty_like(idx)
    run_before[0] = 0
    run_before[1:] = idx[:-1] - last_other[:-1]  # backslashes just before each position
    quote = (b == ord('"')) & (run_before % 2 == 0)
    outside = np.cumsum(quote) % 2 == 0  # (a quote itself is no bracket either way)
    opening = ((b == ord("[")) | (b == ord("{"))) & outside
    closing = ((b == ord("]")) | (b == ord("}"))) & outside
    depth = np.cumsum(opening.astype(np.int32) - closing.astype(np.int32))
    return int(depth.max(initial=0))


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RecordError(f"number out of range: {text[:40]}")
    return value


def _no_constant(name: str) -> Any:
    raise RecordError(f"{name} is not a JSON number")


def load_json(data: bytes, what: str = "") -> Any:
    """Decode one JSON document (a JSONL line, a database cell) within the caps.

    Too deep (checked before parsing), not UTF-8, invalid JSON, NaN/Infinity, a float out
    of range (``1e999999``), an integer longer than Python converts (``int`` digit limit),
    a lone surrogate escape (``\\ud800``): each is a :class:`RecordError` with the reason.
    ``what`` prefixes the reason (e.g. ``column 'messages' is not JSON: ``).
    """
    depth = nesting_depth(data)
    if depth > MAX_DEPTH:
        raise RecordError(f"{what}nested {depth} levels deep (max {MAX_DEPTH})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"{what}not UTF-8 ({e.reason} at byte {e.start})") from e
    try:
        obj = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecordError as e:
        raise RecordError(f"{what}{e}") from e
    except json.JSONDecodeError as e:
        msg = e.msg.removesuffix(" at")  # "Invalid control character at"
        raise RecordError(f"{what}invalid JSON: {msg} at column {e.colno}") from e
    except RecursionError as e:  # defence in depth: the depth cap should have caught it
        raise RecordError(f"{what}nested too deep to parse") from e
    except ValueError as e:  # an integer with more digits than int() converts
        raise RecordError(f"{what}number too large: {str(e).split(';')[0]}") from e
    if _SURROGATE_ESCAPE.search(data):  # rare: check only lines that may hold one
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise RecordError(
                f"{what}a lone surrogate escape (\\ud800-\\udfff): not valid Unicode"
            ) from e
    return obj


def parse_line(line: bytes) -> Example:
    """Decode and parse one JSONL line (bytes, without its newline)."""
    return parse_record(load_json(line))


def is_blank(line: bytes) -> bool:
    """True for an empty or whitespace-only line (any Unicode whitespace, as ``str.isspace``
    has it): skipped, as JSONL readers do, not a bad record."""
    s = line.strip()
    if not s:
        return True
    if s[:1] in (b"{", b"[", b'"'):  # the usual start of a JSON line: not blank
        return False
    try:
        return s.decode("utf-8").isspace()
    except UnicodeDecodeError:
        return False


def rejection_reason(error: Exception) -> str:
    """The quarantine reason for an exception raised while parsing a record: its message
    for a :class:`RecordError`, else its type too (whatever a hostile input provoked)."""
    if isinstance(error, RecordError):
        return str(error)
    return f"{type(error).__name__}: {str(error)[:300]}"


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
        blob = obj["messages"].encode("utf-8", "surrogatepass")
        if len(blob) > MAX_LINE_BYTES:
            raise RecordError(f"column 'messages' is longer than {MAX_LINE_BYTES} bytes")
        obj["messages"] = load_json(blob, "column 'messages' is not JSON: ")
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
