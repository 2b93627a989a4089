"""An LLM-judge reward through any OpenAI-compatible chat endpoint (``reward.judge``).

The judge reads the question, the reference answer and a completion (``reward.judge.prompt``)
and replies with a score from 1 to 10; the reward is (score - 1) / 9, in [0, 1]. The ASRL paper
had GPT-4 rate responses 1-10 as an *evaluation*; here the same kind of rating is a training
reward, weighted with the others.

The ``openai`` client does the HTTP, the per-request timeout and the retries (connection
errors, timeouts, 408/409/429/5xx, with backoff). The requests for one batch go out
``concurrency`` at a time; identical requests in a batch (a group often repeats a completion)
are sent once.

A reply without a score, or a request that still fails after its retries, leaves None for that
completion and raises ``JudgeError`` (a ``PartialRewardError``) carrying the other values, so
``reward.on_error`` decides: ``stop`` ends the run naming the judge, ``skip`` keeps the scores
it has and counts one error. Never a silent 0.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asrl.config import ConfigError, JudgeConfig
from asrl.data.format import ThinkingFormat
from asrl.errors import JudgeError, JudgeUnavailable


def import_openai() -> Any:
    """The ``openai`` module, imported only when a judge is configured."""
    try:
        import openai
    except ImportError as e:
        raise ConfigError(
            "reward.judge needs the openai package (the client for OpenAI-compatible "
            "servers): pip install 'asrl[judge]', or set reward.judge.weight: 0"
        ) from e
    return openai


# A reasoning model's thinking, closed or cut off by max_tokens: its numbers are not the score.
_THINKING = re.compile(r"<think(?:ing)?>.*?(?:</think(?:ing)?>|\Z)", re.S | re.I)
# "on a scale of 1 to 10" / "(1-10)" is not a score either
_SCALE = re.compile(r"\b1\s*(?:-|–|to)\s*10\b", re.I)
_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE_PATTERNS = (
    re.compile(r"\b(?:score|rating|grade)\b[^\d\n]{0,12}?" + _NUMBER, re.I),  # "Score: **7**"
    re.compile(_NUMBER + r"\s*(?:/|out of)\s*10\b", re.I),  # "7/10", "7 out of 10"
    re.compile(r"(?<![\w.])" + _NUMBER + r"(?![\w]|\.\d)"),  # the first number at all
)


def parse_score(reply: str | None) -> float | None:
    """The judge's 1-10 score in its reply, clamped to [1, 10]; None when there is none.

    A labelled score ("Score: 7") wins over "7/10", which wins over the first number.
    """
    text = _SCALE.sub(" ", _THINKING.sub(" ", reply or ""))
    for pattern in _SCORE_PATTERNS:
        m = pattern.search(text)
        if m:
            return min(10.0, max(1.0, float(m.group(1))))
    return None


def score_to_reward(score: float) -> float:
    """1 -> 0.0, 10 -> 1.0."""
    return (score - 1.0) / 9.0


def _describe(err: BaseException) -> str:
    """``Type: message``, with the underlying cause (the client says just 'Connection error.')."""
    text = f"{type(err).__name__}: {err}"
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


class JudgeReward:
    """The judge as a reward function with TRL's contract; ``probe()`` checks the endpoint."""

    __name__ = "judge"

    def __init__(self, cfg: JudgeConfig, fmt: ThinkingFormat | None = None) -> None:
        openai = import_openai()
        self.cfg = cfg
        self.fmt = fmt or ThinkingFormat()
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        # The client insists on a key; a server without auth ignores this placeholder. Never
        # fall back to OPENAI_API_KEY: that key would go to whatever base_url names.
        self.client = openai.OpenAI(
            base_url=cfg.base_url,
            api_key=key or "no-key",
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
        )

    def render(self, question: str, answer: str, reference: str, completion: str) -> str:
        return self.cfg.prompt.format(
            question=question, answer=answer, reference=reference, completion=completion
        )

    def ask(self, prompt: str) -> str:
        """One judge request (the client retries); the reply's text."""
        extra = {} if self.cfg.max_tokens is None else {"max_tokens": self.cfg.max_tokens}
        response = self.client.chat.completions.create(
            model=self.cfg.model,
            messages=[{"role": "user", "content": prompt}],
            temperature=self.cfg.temperature,
            **extra,
        )
        return (response.choices[0].message.content or "") if response.choices else ""

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        answer: list[str | None] | None = None,
        reference: list[str] | None = None,
        **_: Any,
    ) -> list[float | None]:
        n = len(completions)
        references = list(reference) if reference is not None else [""] * n
        answers = list(answer) if answer is not None else [None] * n
        requests = [
            self.render(q, a if a is not None else self.fmt.final_answer(r), r, c)
            for q, a, r, c in zip(prompts, answers, references, completions)
        ]
        replies = self._ask_all(list(dict.fromkeys(requests)))
        values: list[float | None] = []
        failed: list[BaseException] = []
        unparsed: list[str] = []
        for request in requests:
            reply = replies[request]
            if isinstance(reply, BaseException):
                failed.append(reply)
                values.append(None)
                continue
            score = parse_score(reply)
            if score is None:
                unparsed.append(reply)
            values.append(None if score is None else score_to_reward(score))
        if failed or unparsed:
            raise JudgeError(self._summary(n, failed, unparsed), values) from (
                failed[0] if failed else None
            )
        return values

    def _ask_all(self, requests: list[str]) -> dict[str, str | BaseException]:
        """Each distinct request once, ``concurrency`` at a time; a reply or the exception."""
        if not requests:
            return {}
        workers = min(self.cfg.concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asrl-judge") as pool:
            futures = {r: pool.submit(self.ask, r) for r in requests}
        out: dict[str, str | BaseException] = {}
        for request, future in futures.items():
            err = future.exception()
            out[request] = err if err is not None else future.result()
        return out

    def _summary(self, n: int, failed: list[BaseException], unparsed: list[str]) -> str:
        parts = []
        if failed:
            parts.append(
                f"{len(failed)} request(s) to {self.cfg.base_url} failed after "
                f"{self.cfg.max_retries} retries with timeout {self.cfg.timeout_s:g} s "
                f"(first: {_describe(failed[0])})"
            )
        if unparsed:
            parts.append(
                f"{len(unparsed)} reply(ies) had no score 1-10 (first: {unparsed[0][:200]!r})"
            )
        return f"the judge scored {n - len(failed) - len(unparsed)} of {n}: " + "; ".join(parts)

    def probe(self) -> None:
        """One judge call on a fixed example, before any training work: an unreachable server,
        a wrong model name or key, or a reply without a score fails now, naming the URL."""
        where = f"the judge at {self.cfg.base_url} (model {self.cfg.model!r})"
        prompt = self.render("What is 2 + 3?", "5", "2 + 3 = 5.\n5", "2 + 3 = 5, so 5.")
        start = time.perf_counter()
        try:
            reply = self.ask(prompt)
        except Exception as e:
            slow = (
                " (a server that loads the model on first use may need a longer timeout_s)"
                if "Timeout" in type(e).__name__
                else ""
            )
            raise JudgeUnavailable(
                f"reward.judge: {where} did not answer a test request: {_describe(e)} "
                f"(after {time.perf_counter() - start:.1f} s, {self.cfg.max_retries} retries, "
                f"timeout {self.cfg.timeout_s:g} s each). Start the server, or fix "
                "reward.judge.base_url / model / api_key_env / timeout_s, or set "
                f"reward.judge.weight: 0{slow}"
            ) from e
        if parse_score(reply) is None:
            raise JudgeUnavailable(
                f"reward.judge: {where} answered a test request without a score 1-10: "
                f"{reply[:300]!r}. Change reward.judge.prompt, raise reward.judge.max_tokens "
                "(a model that thinks first needs room), or use another model"
            )
