"""The LLM-judge reward, through the real ``openai`` client over HTTP to a local server.

The server below is NOT a language model: it speaks the OpenAI wire format
(``POST /v1/chat/completions``, ``GET /v1/models``) and scores deterministically — 9 when the
completion contains the reference answer, else 2 — so that right and wrong answers must come
back as high and low rewards through the whole path (template, HTTP, parsing, scaling).
tests/test_judge_server.py runs the judge against a real server and model (transformers serve).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from asrl.config import ConfigError, JudgeConfig, RewardConfig, config_from_dict
from asrl.data.format import ThinkingFormat
from asrl.errors import RewardError
from asrl.preflight import preflight
from asrl.rewards.builtin import RewardSet
from asrl.rewards.judge import (
    JudgeError,
    JudgeReward,
    JudgeUnavailable,
    parse_score,
    score_to_reward,
)
from asrl.types import Example

FMT = ThinkingFormat()
# markers the fake server can read back out of the rendered prompt
TEMPLATE = "Q: {question}\nREF<<{answer}>>\nOUT<<{completion}>>\nScore 1-10, number only."


class FakeJudge:
    """A threaded HTTP server in the OpenAI format; counts requests and requests in flight."""

    def __init__(self, fail_first=0, delay_s=0.0, reply=None):
        self.fail_first = fail_first  # the first N chat requests get a 500
        self.delay_s = delay_s  # seconds before answering (beyond a client timeout: a hang)
        self.reply = reply  # fixed reply text, else the score rule
        self.requests: list[dict] = []
        self.auth: list[str | None] = []  # Authorization headers received
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer(self, prompt: str) -> str:
        if self.reply is not None:
            return self.reply
        if "GIBBERISH" in prompt:
            return "I would rather not say."
        ref = re.search(r"REF<<(.*?)>>", prompt, re.S)
        out = re.search(r"OUT<<(.*?)>>", prompt, re.S)
        if ref is None or out is None:
            return "Score: 5"
        return "Score: 9" if ref.group(1).strip() in out.group(1) else "2"

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code, body, headers=()):
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout) and closed the connection
                    pass

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    model = {"id": "fake-judge", "object": "model", "created": 0, "owned_by": "t"}
                    self._send(200, {"object": "list", "data": [model]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append(body)
                    judge.auth.append(self.headers.get("Authorization"))
                    n = len(judge.requests)
                    judge.in_flight += 1
                    judge.max_in_flight = max(judge.max_in_flight, judge.in_flight)
                try:
                    if judge.delay_s:
                        judge.stop.wait(judge.delay_s)
                    if self.path != "/v1/chat/completions":
                        self._send(404, {"error": {"message": "not found"}})
                    elif n <= judge.fail_first:
                        # retry-after-ms keeps the test quick; the client's own backoff is ~0.5 s
                        err = {"error": {"message": "overloaded", "type": "server_error"}}
                        self._send(500, err, [("retry-after-ms", "10")])
                    else:
                        text = judge.answer(body["messages"][-1]["content"])
                        self._send(200, _completion(body["model"], text))
                finally:
                    with judge.lock:
                        judge.in_flight -= 1

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()  # wake handlers that are "hanging"
        self.server.shutdown()
        self.server.server_close()


def _completion(model: str, text: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }


def judge_cfg(url: str, **kw) -> JudgeConfig:
    base = dict(weight=1.0, base_url=url, model="fake-judge", timeout_s=5.0, max_retries=0)
    base.update(kw)
    base.setdefault("prompt", TEMPLATE)
    return JudgeConfig(**base)


def ex(answer="42", i=0):
    msgs = ({"role": "user", "content": "What is 17 + 25?"},)
    return Example(
        f"x{i}", msgs, "<|thinking|>\n[LOGIC]17 + 25 = 42[/LOGIC]\n<|/thinking|>\n42", answer
    )


def call(judge: JudgeReward, completions: list[str], answer="42") -> list[float | None]:
    n = len(completions)
    return judge(
        prompts=["What is 17 + 25?"] * n,
        completions=completions,
        answer=[answer] * n,
        reference=["42"] * n,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# parsing: pure


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("7", 7.0),
        ("Score: **8**", 8.0),
        ("8/10", 8.0),
        ("On a scale of 1 to 10, I'd give it 6.", 6.0),  # the scale is not the score
        ("Score (1-10): 4", 4.0),
        ("The answer has 3 steps. Rating: 9", 9.0),  # a labelled score wins
        ("<think>17 + 25 is 42, so 10</think>\n3", 3.0),  # thinking is not the score
        ("7.5", 7.5),
        ("15", 10.0),  # clamped
        ("0", 1.0),
        ("I cannot judge this.", None),
        ("<think>still thinking when max_tokens ran out: 7", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_score(reply, score):
    assert parse_score(reply) == score


def test_score_scaled_to_unit_interval():
    assert score_to_reward(1) == 0.0
    assert score_to_reward(10) == 1.0
    assert score_to_reward(9) == pytest.approx(8 / 9)


# ---------------------------------------------------------------------------------------
# over HTTP, through the real openai client


def test_right_answers_score_high_wrong_low():
    with FakeJudge() as server:
        judge = JudgeReward(judge_cfg(server.url), FMT)
        judge.probe()
        values = call(judge, ["17 + 25 = 42", "The answer is 41.", "42"])
        assert values == pytest.approx([8 / 9, 1 / 9, 8 / 9])  # 9, 2, 9 on the 1-10 scale
        # the rendered template carried the question, the reference answer and the completion
        body = server.requests[-1]
        assert body["model"] == "fake-judge"
        assert body["temperature"] == 0.0 and body["max_tokens"] == 16
        assert "Q: What is 17 + 25?" in body["messages"][0]["content"]


def test_default_prompt_and_answer_fallback():
    # without a ground-truth answer the reference response's final answer is the reference
    with FakeJudge(reply="Score: 10") as server:
        judge = JudgeReward(judge_cfg(server.url, prompt=JudgeConfig().prompt), FMT)
        assert judge(["What is 17 + 25?"], ["42"], answer=[None], reference=[ex().response]) == [
            1.0
        ]
        text = server.requests[-1]["messages"][0]["content"]
        assert "What is 17 + 25?" in text and "Reference answer:\n42\n" in text
        assert "[LOGIC]" not in text  # the reference's thinking is not the answer


def test_identical_completions_are_judged_once():
    with FakeJudge() as server:
        judge = JudgeReward(judge_cfg(server.url), FMT)
        assert call(judge, ["42", "42", "41", "42"]) == pytest.approx([8 / 9, 8 / 9, 1 / 9, 8 / 9])
        assert len(server.requests) == 2


def test_api_key_from_named_env_var(monkeypatch):
    monkeypatch.setenv("ASRL_TEST_JUDGE_KEY", "sekrit")
    monkeypatch.setenv("OPENAI_API_KEY", "must-not-be-sent")
    with FakeJudge() as server:
        JudgeReward(judge_cfg(server.url, api_key_env="ASRL_TEST_JUDGE_KEY"), FMT).probe()
        JudgeReward(judge_cfg(server.url), FMT).probe()
        auth = server.auth
        assert auth[0] == "Bearer sekrit"
        assert "must-not-be-sent" not in auth[1]  # no key configured: never OPENAI_API_KEY


def test_server_errors_are_retried():
    with FakeJudge(fail_first=2) as server:
        judge = JudgeReward(judge_cfg(server.url, max_retries=2), FMT)
        assert call(judge, ["42"]) == pytest.approx([8 / 9])
        assert len(server.requests) == 3  # two 500s, then the answer
    with FakeJudge(fail_first=2) as server:
        judge = JudgeReward(judge_cfg(server.url, max_retries=1), FMT)
        with pytest.raises(JudgeError, match="InternalServerError") as info:
            call(judge, ["42"])
        assert info.value.values == [None]
        assert len(server.requests) == 2


def test_hanging_server_fails_within_bounded_time():
    with FakeJudge(delay_s=30) as server:
        judge = JudgeReward(judge_cfg(server.url, timeout_s=0.3, max_retries=1), FMT)
        start = time.perf_counter()
        with pytest.raises(JudgeError, match=r"APITimeoutError.*") as info:
            call(judge, ["42"])
        elapsed = time.perf_counter() - start
        # 2 attempts x 0.3 s + one backoff of <= 0.5 s, with slack for a busy machine
        assert elapsed < 5, elapsed
        assert len(server.requests) == 2
        assert server.url in str(info.value) and "1 retries" in str(info.value)


def test_unreachable_port_fails_at_construction_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    cfg = RewardConfig(judge=judge_cfg(url, max_retries=1))
    start = time.perf_counter()
    with pytest.raises(JudgeUnavailable) as info:
        RewardSet.from_config(cfg, FMT)
    assert time.perf_counter() - start < 5
    msg = str(info.value)
    assert url in msg and "fake-judge" in msg
    assert "APIConnectionError" in msg and "refused" in msg.lower()  # the underlying error
    assert isinstance(info.value, ConfigError)  # the CLI prints it as a configuration error


def test_probe_rejects_a_judge_that_never_gives_a_score():
    with (
        FakeJudge(reply="As an AI I cannot grade.") as server,
        pytest.raises(JudgeUnavailable, match="without a score 1-10.*As an AI"),
    ):
        RewardSet.from_config(RewardConfig(judge=judge_cfg(server.url)), FMT)


def test_wrong_model_name_fails_probe():
    with FakeJudge() as server:
        judge = JudgeReward(judge_cfg(server.url + "/nope"), FMT)  # 404 on every path
        with pytest.raises(JudgeUnavailable, match="NotFoundError"):
            judge.probe()


def test_concurrency_issues_parallel_requests():
    completions = [f"attempt {i}: 42" for i in range(8)]
    with FakeJudge(delay_s=0.25) as server:
        judge = JudgeReward(judge_cfg(server.url, concurrency=4), FMT)
        start = time.perf_counter()
        assert call(judge, completions) == pytest.approx([8 / 9] * 8)
        elapsed = time.perf_counter() - start
        assert 2 <= server.max_in_flight <= 4, server.max_in_flight
        assert elapsed < 8 * 0.25  # faster than one at a time
    with FakeJudge(delay_s=0.05) as server:
        judge = JudgeReward(judge_cfg(server.url, concurrency=1), FMT)
        call(judge, completions[:3])
        assert server.max_in_flight == 1


# ---------------------------------------------------------------------------------------
# in the RewardSet: a named, weighted component; errors per reward.on_error


def test_judge_is_a_weighted_component_of_the_reward_set():
    with FakeJudge() as server:
        cfg = RewardConfig(format_weight=0, correctness_weight=0, judge=judge_cfg(server.url))
        cfg.judge.weight = 0.5
        rs = RewardSet.from_config(cfg, FMT)
        assert [p.name for p in rs.parts] == ["judge"]
        totals, comps = rs.score([ex(), ex()], ["42", "41"])
        assert comps["judge"] == pytest.approx([8 / 9, 1 / 9])
        assert totals == pytest.approx([0.5 * 8 / 9, 0.5 * 1 / 9])
        n_probe = 1
        assert len(server.requests) == n_probe + 2


def test_judge_off_by_default_and_never_contacted():
    rs = RewardSet.from_config(RewardConfig(), FMT)
    assert "judge" not in [p.name for p in rs.parts]


def test_unparseable_reply_stops_by_default():
    with FakeJudge() as server:
        rs = RewardSet.from_config(RewardConfig(judge=judge_cfg(server.url)), FMT)
        with pytest.raises(RewardError, match="'judge' failed.*no score 1-10.*rather not say"):
            rs.score([ex(), ex()], ["42", "GIBBERISH"])


def test_unparseable_reply_skipped_keeps_the_other_scores():
    with FakeJudge() as server:
        cfg = RewardConfig(judge=judge_cfg(server.url), on_error="skip", max_errors=1)
        rs = RewardSet.from_config(cfg, FMT)
        totals, comps = rs.score([ex(), ex()], ["42", "GIBBERISH"])
        assert comps["judge"] == pytest.approx([8 / 9, None])
        assert comps["correctness"] == [1.0, -0.5]
        assert totals[1] == pytest.approx(-0.15 - 0.85 * 0.5)  # None left out of the sum
        assert rs.errors == 1
        with pytest.raises(RewardError, match="over reward.max_errors=1"):
            rs.score([ex()], ["GIBBERISH again"])


def test_failed_requests_skipped_per_on_error():
    with FakeJudge() as server:
        cfg = RewardConfig(judge=judge_cfg(server.url), on_error="skip")
        rs = RewardSet.from_config(cfg, FMT)
        server.fail_first = len(server.requests) + 2  # the probe passed; the next two get 500
        _, comps = rs.score([ex(i=0), ex(i=1)], ["42", "41"])
        assert comps["judge"] == [None, None]
        assert rs.errors == 1


# ---------------------------------------------------------------------------------------
# configuration


def test_config_section_and_validation(monkeypatch):
    monkeypatch.delenv("ASRL_NO_SUCH_KEY", raising=False)
    cfg = config_from_dict(
        {"reward": {"judge": {"weight": 0.3, "model": "m", "base_url": "http://h:1/v1"}}}
    )
    assert cfg.reward.judge.weight == 0.3 and cfg.reward.judge.concurrency == 4
    bad = [
        ({"timeout_s": 0}, "reward.judge.timeout_s"),
        ({"concurrency": 0}, "reward.judge.concurrency"),
        ({"max_retries": -1}, "reward.judge.max_retries"),
        ({"prompt": "rate {completoin}"}, r"unknown field\(s\) \{completoin\}"),
        ({"prompt": "rate {question}"}, "must contain {completion}"),
        ({"prompt": "rate {completion"}, "literal braces"),
        ({"weight": 1, "model": ""}, "reward.judge.model"),
        ({"weight": 1, "model": "m", "base_url": "localhost:8080"}, "http"),
        ({"weight": 1, "model": "m", "api_key_env": "ASRL_NO_SUCH_KEY"}, "ASRL_NO_SUCH_KEY"),
        ({"wieght": 1}, "Did you mean 'reward.judge.weight'"),
    ]
    for judge, match in bad:
        with pytest.raises(ConfigError, match=match):
            preflight(config_from_dict({"reward": {"judge": judge}}))
    # the field list is checked, but an unused judge needs no model or server
    config_from_dict({"reward": {"judge": {"weight": 0, "model": ""}}})


def test_missing_openai_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'asrl\[judge\]'"):
        preflight(config_from_dict({"reward": {"judge": {"weight": 1, "model": "m"}}}))


# ---------------------------------------------------------------------------------------
# in a run


def test_tiny_run_logs_the_judge_component(tmp_path):
    from asrl.config import load_config
    from asrl.train.loop import train

    with FakeJudge(reply="Score: 7") as server:
        cfg = load_config(
            "configs/tiny.yaml",
            [
                f"output_dir={tmp_path / 'out'}",
                f"data.path={tmp_path / 'data.jsonl'}",
                "schedule.epochs=1",
                "eval.max_examples=2",
                "reward.judge.weight=0.5",
                "reward.judge.model=fake-judge",
                f"reward.judge.base_url={server.url}",
            ],
        )
        train(cfg)
        lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
        grpo = [json.loads(x) for x in lines if '"phase": "grpo"' in x]
        assert grpo[0]["train/reward/judge"] == pytest.approx(6 / 9)
        assert len(server.requests) > 1  # the probe, then rollouts and evals


def test_cli_fails_before_the_model_loads_when_the_judge_is_down(tmp_path, monkeypatch, capsys):
    import asrl.train.setup
    from asrl.cli import main

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the judge was probed")

    monkeypatch.setattr(asrl.train.setup, "load_policy", no_model)
    url = f"http://127.0.0.1:{free_port()}/v1"
    code = main(
        ["train", "-c", "configs/tiny.yaml", "-o", str(tmp_path / "out")]
        + ["--set", f"data.path={tmp_path / 'data.jsonl'}", "--set", "reward.judge.weight=1"]
        + ["--set", "reward.judge.model=m", "--set", f"reward.judge.base_url={url}"]
        + ["--set", "reward.judge.max_retries=0"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "configuration error: reward.judge:" in err and url in err and "refused" in err
