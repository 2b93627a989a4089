"""reasoning-gym tasks as a live source, scored by each task's own verifier.

``data.path: reasoning_gym:basic_arithmetic`` (any registered task) makes a generator that
grows the dataset at every poll: ``initial`` examples at the first, ``per_poll`` more at each
later one (the loop polls once per epoch), up to ``size``. Item ``i`` depends only on
(task, seed, options, i), so runs reproduce, and the cursor (the index of the next item) is
all a checkpoint needs: a resumed run regenerates what it had.

Each item becomes a record whose reference response is in our thinking format with the
task's answer after the thinking block. reasoning-gym gives no worked solution for most
tasks, so the sections are short templates (the task's own chain of thought or expression
where it has one): SFT teaches the format and the answer, GRPO the reasoning. The record
carries a ``reasoning_gym`` column (the task, its settings and the item's index), and the
correctness reward calls the task's ``score_answer(final_answer, item)`` on the item it
regenerates from that (a column may carry the item itself as ``entry`` instead).

The package is an optional extra (``pip install 'asrl[gym]'``), imported on first use.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from asrl.data.format import ThinkingFormat
from asrl.data.source_base import CounterCursor, RawRecord
from asrl.errors import ConfigError

if TYPE_CHECKING:
    from asrl.config import ReasoningGymConfig

COLUMN = "reasoning_gym"  # the record column the correctness reward looks for
_CACHE: dict[str, Any] = {}  # (task, seed, size, options) -> dataset, for the scorer


def _reasoning_gym() -> Any:
    try:
        import reasoning_gym
    except ImportError as e:
        raise ConfigError(
            "reasoning_gym:TASK (data.path, grpo.question_source) needs the reasoning-gym "
            "package: pip install 'asrl[gym]' (or pip install reasoning-gym)"
        ) from e
    return reasoning_gym


def task_names() -> list[str]:
    """Every task reasoning-gym registers."""
    _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def check_task(task: str, options: Mapping[str, Any] | None = None, key: str = "data.path") -> None:
    """Fail with an actionable message on an unknown task or options it rejects (the
    message names ``key``, the setting that asked for the task)."""
    rg = _reasoning_gym()
    names = task_names()
    if task not in names:
        close = difflib.get_close_matches(task, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"{key}: '{task}' is not a reasoning-gym task.{hint} Known: {', '.join(names)}"
        )
    options = dict(options or {})
    clash = sorted({"seed", "size"} & set(options))
    if clash:
        raise ConfigError(
            f"data.reasoning_gym.options: set {', '.join(clash)} as "
            f"data.reasoning_gym.{clash[0]}, not as a task option"
        )
    try:
        rg.create_dataset(task, seed=0, size=1, **options)
    except Exception as e:  # TypeError (unknown option), ValueError/AssertionError (bad value)
        raise ConfigError(
            f"data.reasoning_gym.options: task '{task}' rejects {options}: {type(e).__name__}: {e}"
        ) from e


def task_dataset(task: str, seed: int, size: int, options: Mapping[str, Any]) -> Any:
    """The reasoning-gym dataset for these settings (one instance per settings, cached)."""
    key = json.dumps([task, seed, size, dict(options)], sort_keys=True, default=repr)
    if key not in _CACHE:
        rg = _reasoning_gym()
        try:
            _CACHE[key] = rg.create_dataset(task, seed=seed, size=size, **options)
        except Exception:
            check_task(task, options)  # an unknown task or option: say which, and what exists
            raise
    return _CACHE[key]


@functools.lru_cache(maxsize=4096)
def _item(ds: Any, index: int) -> dict[str, Any]:
    return ds[index]  # GRPO scores each prompt num_generations times: generate it once


def score_entry(answer: str | None, column: Mapping[str, Any]) -> float:
    """The task's own score (0..1) of ``answer`` for the item a record's column describes:
    ``entry`` when the column holds it, else item ``index`` regenerated from the settings."""
    ds = task_dataset(column["task"], column["seed"], column["size"], column.get("options", {}))
    entry = column.get("entry")
    if entry is None:
        entry = _item(ds, int(column["index"]))
    return float(ds.score_answer(answer, entry))


def reference_response(entry: Mapping[str, Any], task: str, fmt: ThinkingFormat) -> str:
    """The item's answer in the thinking format, after short templated sections."""
    answer = str(entry["answer"]).strip()
    meta = entry.get("metadata") or {}
    cot, expr = meta.get("answer_cot"), meta.get("expression")
    if isinstance(cot, str) and cot.strip():
        logic = cot.strip()
    elif isinstance(expr, str) and expr.strip() and expr.strip() != answer:
        logic = f"{expr.strip()} = {answer}"
    else:
        logic = f"Work through the {task.replace('_', ' ')} task step by step."
    texts = [logic, "Check the result against what the question asks."]
    n = len(fmt.sections)
    texts = texts[:n] + [f"The answer is {answer}."] * max(0, n - 2)
    return fmt.render(texts, answer)


class ReasoningGymSource(CounterCursor):
    """A reasoning-gym task as a growing source; the cursor is the index of the next item."""

    def __init__(
        self,
        task: str,
        seed: int = 0,
        initial: int = 200,
        per_poll: int = 50,
        size: int = 100_000,
        options: Mapping[str, Any] | None = None,
        fmt: ThinkingFormat | None = None,
    ) -> None:
        self.task, self.seed, self.size = task, seed, size
        self.initial, self.per_poll = initial, per_poll
        self.options = dict(options or {})
        self.fmt = fmt or ThinkingFormat()
        self.name = f"reasoning_gym:{task}"
        self.cursor = "index"
        self.index = 0  # the next item
        self.limit: int | None = None  # replaying: stop before this index

    @classmethod
    def from_config(
        cls, task: str, cfg: ReasoningGymConfig | None, fmt: ThinkingFormat | None
    ) -> ReasoningGymSource:
        if cfg is None:
            return cls(task, fmt=fmt)
        return cls(task, cfg.seed, cfg.initial, cfg.per_poll, cfg.size, cfg.options, fmt)

    def record(self, index: int, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Item ``index`` as a record. The id hashes the question, so a question the
        generator repeats is absorbed once and never sits in two splits. The column holds the
        settings and the index, not the item: plain JSON (checkpoints store records), and
        the scorer regenerates the item exactly."""
        question, answer = entry["question"], entry.get("answer")
        if answer is None or not str(answer).strip():
            raise ValueError("the item has no answer")
        digest = hashlib.sha256(question.encode()).hexdigest()[:16]
        column = {
            "task": self.task,
            "seed": self.seed,
            "size": self.size,
            "options": self.options,
            "index": index,
        }
        return {
            "id": f"rg-{self.task}-{digest}",
            "prompt": question,
            "response": reference_response(entry, self.task, self.fmt),
            "answer": str(answer).strip(),
            "type": self.task,
            COLUMN: column,
        }

    def poll(self) -> Iterator[RawRecord]:
        limit, self.limit = self.limit, None
        if limit is None:
            count = self.initial if self.index == 0 else self.per_poll
            limit = self.index + count
        limit = min(limit, self.size)
        if self.index >= limit:
            return
        ds = task_dataset(self.task, self.seed, self.size, self.options)
        while self.index < limit:
            i = self.index
            self.index += 1
            where = f"{self.name}:{i}"
            try:
                rec = self.record(i, ds[i])
            except Exception as e:  # a generator bug on one item: quarantine it, go on
                reason = f"reasoning-gym '{self.task}' failed on item {i}: {type(e).__name__}: {e}"
                yield RawRecord({"index": i}, where, error=reason)
                continue
            yield RawRecord(rec, where)
