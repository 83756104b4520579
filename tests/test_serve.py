"""`led-local serve` end to end: the real server in a subprocess, the official openai client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from led_local.cli import main

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key"
PROMPT = "Name three colors."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `led-local serve` subprocess on a free port."""

    def __init__(self, model: Path, *args: str,
                 code: str = "from led_local.cli import main; main()") -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", str(model),
             "--port", str(self.port), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not start")

    def get(self, path: str, **headers: str) -> tuple[int, bytes]:
        return self.request("GET", path, None, headers)

    def request(self, method: str, path: str, body: bytes | None,
                headers: dict | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def health(self) -> dict:
        return json.loads(self.get("/health")[1])

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0,
                             timeout=600)

    def wait_idle(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if h["slots_busy"] == 0 and h["queue"] == 0 or time.monotonic() > deadline:
                return h
            time.sleep(0.05)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def server(smollm2):
    s = Server(smollm2, "--parallel", "8", "--ctx", "512", "--api-key", KEY, "--threads", "1")
    yield s
    assert s.stop() == 0


def chat(server: Server, **kw):
    kw.setdefault("messages", [{"role": "user", "content": PROMPT}])
    kw.setdefault("max_tokens", 10)
    return server.client().chat.completions.create(model="m", **kw)


def test_chat_completion_has_openai_fields_usage_and_led(server):
    r = chat(server, seed=1)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == "SmolLM2-135M-Instruct.Q4_1"
    (c,) = r.choices
    assert c.message.role == "assistant" and c.message.content
    assert c.finish_reason == "length"
    assert r.usage.completion_tokens == 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + 10
    assert c.model_extra["led"]["seed"] == 1 and 0 <= c.model_extra["led"]["explored"] <= 10


def test_seeded_chat_equals_generate_and_streaming(server):
    r = chat(server, seed=7, max_tokens=12)
    from click.testing import CliRunner
    out = CliRunner().invoke(main, ["generate", str(ROOT / "models" / "SmolLM2-135M-Instruct"
                                                   ".Q4_1.gguf"), "-p", PROMPT, "-n", "12",
                                    "-s", "7", "--threads", "1", "--json"])
    assert out.exit_code == 0, out.output
    assert r.choices[0].message.content == json.loads(out.stdout)["text"]
    chunks = list(chat(server, seed=7, max_tokens=12, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert all(ch.usage is None for ch in chunks)


def test_stream_usage_comes_last_when_asked(server):
    chunks = list(chat(server, seed=2, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(ch.usage is None for ch in chunks[:-1])


def test_completions_stream_and_not(server):
    cl = server.client()
    r = cl.completions.create(model="m", prompt="The capital of France is", max_tokens=8,
                              seed=3)
    assert r.object == "text_completion" and r.choices[0].text
    parts = list(cl.completions.create(model="m", prompt="The capital of France is",
                                       max_tokens=8, seed=3, stream=True))
    assert "".join(p.choices[0].text for p in parts) == r.choices[0].text
    assert parts[-1].choices[0].finish_reason == "length"


def test_n2_shares_the_prompt_and_choice_0_is_the_single_answer(server):
    one = chat(server, seed=5)
    two = chat(server, seed=5, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content == one.choices[0].message.content
    assert two.choices[1].message.content != two.choices[0].message.content
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    # choice 0 is the single answer; choice 1 runs to the 10-token limit or stops before it
    rest = two.usage.completion_tokens - one.usage.completion_tokens
    assert rest == 10 if two.choices[1].finish_reason == "length" else 0 < rest < 10


def test_stop_string_is_not_returned(server):
    full = chat(server, max_tokens=16, extra_body={"method": "greedy"}).choices[0].message.content
    word = full.split()[2]
    r = chat(server, max_tokens=16, stop=[word], extra_body={"method": "greedy"})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[:full.index(word)]
    parts = list(chat(server, max_tokens=16, stop=word, stream=True,
                      extra_body={"method": "greedy"}))
    text = "".join(p.choices[0].delta.content or "" for p in parts)
    assert text == full[:full.index(word)] and parts[-1].choices[0].finish_reason == "stop"


def test_logprobs_and_top_logprobs(server):
    r = chat(server, seed=4, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.logprob - 1e-9


def test_extra_body_led_options_apply_and_bad_ones_are_400(server):
    r = chat(server, seed=3, extra_body={"exploit": False, "led_depths": 4})
    assert r.choices[0].model_extra["led"]["explored"] == r.usage.completion_tokens
    a = chat(server, seed=1, extra_body={"method": "greedy"}).choices[0].message.content
    b = chat(server, seed=2, temperature=0.9, extra_body={"method": "greedy"})
    assert b.choices[0].message.content == a
    for bad in ({"led_depths": 1}, {"led_depths": 16}, {"top_k": 5}, {"method": "beam"},
                {"method": "dola"}, {"led_candidates": "8"}):
        with pytest.raises(openai.BadRequestError):
            chat(server, extra_body=bad)


def test_seed_gives_the_same_tokens_alone_and_with_7_other_requests(server):
    alone = chat(server, seed=11, max_tokens=16).choices[0].message.content
    results: dict[int, str] = {}

    def one(i: int) -> None:
        r = chat(server, seed=11 if i == 0 else 100 + i, max_tokens=16 if i == 0 else 24,
                 messages=[{"role": "user", "content": PROMPT if i == 0 else f"Count to {i}."}])
        results[i] = r.choices[0].message.content

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads[1:]:
        t.start()
    time.sleep(0.3)
    threads[0].start()
    for t in threads:
        t.join()
    assert results[0] == alone and len(results) == 8


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    stream = chat(server, seed=1, max_tokens=400, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    assert server.health()["slots_busy"] == 1
    stream.close()
    assert server.wait_idle(10)["slots_busy"] == 0
    # a non-streaming client gives up long before a long answer could finish
    impatient = server.client().with_options(timeout=0.5, max_retries=0)
    long_answer = "Write every number from 1 to 1000 in words, separated by commas."
    with pytest.raises(openai.APITimeoutError):  # (not ended early by the end token)
        impatient.chat.completions.create(model="m", messages=[{"role": "user",
                                          "content": long_answer}], max_tokens=2000,
                                          extra_body={"ignore_eos": True})
    assert server.wait_idle(10)["slots_busy"] == 0
    assert chat(server, seed=1).choices[0].message.content  # still serving


def test_ignore_eos_runs_to_max_tokens(server):
    short = [{"role": "user", "content": "Reply with one word: yes or no."}]
    r = chat(server, messages=short, max_tokens=40, extra_body={"method": "greedy"})
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens < 10
    on = chat(server, messages=short, max_tokens=40,
              extra_body={"method": "greedy", "ignore_eos": True})
    assert on.choices[0].finish_reason == "length" and on.usage.completion_tokens == 40
    # greedy: the same answer up to where the end token was the top one
    assert on.choices[0].message.content.startswith(r.choices[0].message.content)
    for method in ("led", "sample", "hapo"):
        led = chat(server, messages=short, max_tokens=40, seed=3,
                   extra_body={"method": method, "ignore_eos": True})
        assert led.choices[0].finish_reason == "length", method
        assert led.usage.completion_tokens == 40, method
    with pytest.raises(openai.BadRequestError, match="ignore_eos"):
        chat(server, extra_body={"ignore_eos": True, "grammar": 'root ::= "a"'})


def test_http_errors_are_openai_shaped(server):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    code, body = server.request("POST", "/v1/chat/completions", b"{not json", auth)
    assert code == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    code, body = server.request("POST", "/v1/chat/completions",
                                json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": "ten"}).encode(), auth)
    assert code == 400 and json.loads(body)["error"]["param"] == "max_tokens"
    code, body = server.request("GET", "/v1/nothing", None, auth)
    assert code == 404 and "error" in json.loads(body)
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").models.list()
    assert server.get("/v1/models")[0] == 401
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Content-Length", str(8 * 1024 * 1024 + 1))
    conn.endheaders()  # the body is refused before it is sent
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["message"]
    conn.close()
    long = "word " * 600
    with pytest.raises(openai.BadRequestError, match="more than the context"):
        chat(server, messages=[{"role": "user", "content": long}])


def test_models_health_and_metrics(server):
    (m,) = server.client().models.list().data
    assert m.id == "SmolLM2-135M-Instruct.Q4_1"
    h = server.health()
    assert h["status"] == "ok" and h["slots_busy"] + h["slots_free"] == 8
    code, body = server.get("/metrics", Authorization=f"Bearer {KEY}")
    text = body.decode()
    assert code == 200
    for name in ("led_requests_total", "led_prompt_tokens_total", "led_completion_tokens_total",
                 "led_queue_length", "led_slots_busy", "led_time_to_first_token_seconds_bucket",
                 "led_token_latency_seconds_bucket", "led_explored_tokens_total"):
        assert name in text, name
    assert 'led_requests_total{status="200"}' in text


def test_queue_overflow_is_503_and_sigterm_stops_cleanly(smollm2):
    s = Server(smollm2, "--parallel", "1", "--max-queue", "1", "--ctx", "512", "--threads", "1")
    try:
        cl = s.client()
        running = cl.chat.completions.create(model="m", messages=[{"role": "user",
                                             "content": PROMPT}], max_tokens=300, stream=True)
        next(iter(running))
        waiting = threading.Thread(target=lambda: chat(s, max_tokens=2))
        waiting.start()
        deadline = time.monotonic() + 30
        while s.health()["queue"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(openai.InternalServerError) as e:
            chat(s, max_tokens=2)
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"]
        running.close()
        waiting.join()
        t0 = time.monotonic()
        assert s.stop() == 0
        assert time.monotonic() - t0 < 10
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


def test_server_defaults_for_max_tokens_and_seed(smollm2):
    """--max-tokens and --seed are what a request without max_tokens or seed gets; a request's
    own values still win."""
    s = Server(smollm2, "--parallel", "2", "--ctx", "512", "--threads", "1",
               "--max-tokens", "7", "--seed", "11", "-m", "sample", "-t", "1.2")
    try:
        c = s.client()
        msgs = [{"role": "user", "content": "Tell me a story about a dragon."}]
        a = c.chat.completions.create(model="m", messages=msgs)
        b = c.chat.completions.create(model="m", messages=msgs)
        own = c.chat.completions.create(model="m", messages=msgs, seed=12, max_tokens=9)
        text = c.completions.create(model="m", prompt="Once upon a time")
    finally:
        assert s.stop() == 0
    assert a.usage.completion_tokens == 7 and a.choices[0].finish_reason == "length"
    seed = [r.choices[0].model_extra["led"]["seed"] for r in (a, b, own)]
    assert seed == [11, 11, 12] and own.usage.completion_tokens == 9
    assert a.choices[0].message.content == b.choices[0].message.content
    assert own.choices[0].message.content != a.choices[0].message.content
    assert text.usage.completion_tokens == 7


@pytest.mark.parametrize("args,message", [
    (("--max-tokens", "0"), "`max_tokens` must be >= 1, got 0"),
])
def test_server_defaults_refused(smollm2, args, message):
    r = subprocess.run([sys.executable, "-c", "from led_local.cli import main; main()", "serve",
                        str(smollm2), "--port", "0", *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and message.replace("`max_tokens`", "--max-tokens") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_continue_final_message_continues_the_assistant_s_text(server):
    """vLLM's continue_final_message (add_generation_prompt false): the prompt is the rendered
    conversation cut after the final assistant text, so the reply equals a raw completion of
    that text with the same seed."""
    from led_local.llama.runtime import Runtime

    prefill = "The three colors are"
    msgs = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": prefill}]
    with Runtime(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf", vocab_only=True) as rt:
        rendered = rt.apply_chat_template(msgs, add_generation_prompt=False)
    cut = rendered[:rendered.rfind(prefill) + len(prefill)]
    assert cut != rendered  # the template ends the turn after it: that part goes
    c = server.client()
    r = c.chat.completions.create(model="m", messages=msgs, max_tokens=12, seed=9,
                                  extra_body={"continue_final_message": True,
                                              "add_generation_prompt": False})
    raw = c.completions.create(model="m", prompt=cut, max_tokens=12, seed=9)
    assert r.choices[0].message.content == raw.choices[0].text
    assert r.usage.prompt_tokens == raw.usage.prompt_tokens
    for extra, msg in (({"continue_final_message": True}, "add_generation_prompt: false"),
                       ({"continue_final_message": True, "add_generation_prompt": False,
                         "messages": [{"role": "user", "content": "Hi"}]}, "assistant message")):
        body = {"messages": msgs, "max_tokens": 2, **extra}
        status, data = server.request("POST", "/v1/chat/completions", json.dumps(body).encode(),
                                      {"Content-Type": "application/json",
                                       "Authorization": f"Bearer {KEY}"})
        err = json.loads(data)["error"]
        assert status == 400 and msg in err["message"]
        assert err["param"] == "continue_final_message"
