"""`led-local serve` lets nobody in and says no clearly: Host, Origin and Content-Type checks,
API keys, binding before loading, the queue bound (issue 21, cases 5, 6, 17, 19, 20, 22, 27)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_serve import Server

from led_local.cli import main

ROOT = Path(__file__).resolve().parent.parent
KEY = "s3cret-key"
BODY = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).encode()


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def post(port: int, body: bytes = BODY, **headers: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        hdrs = {"Content-Type": "application/json", **headers}
        conn.request("POST", "/v1/chat/completions", body, {k.replace("_", "-"): v
                                                            for k, v in hdrs.items()})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def call(port: int, method: str, path: str, headers: dict, body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def guarded(smollm2, tmp_path_factory):
    keyfile = tmp_path_factory.mktemp("key") / "key.txt"
    keyfile.write_text(KEY + "\n")
    s = Server(smollm2, "--parallel", "2", "--ctx", "256", "--threads", "1",
               "--api-key-file", str(keyfile), "--allowed-host", "led.example",
               "--cors-origin", "http://localhost:3000")
    yield s
    assert s.stop() == 0
    assert "warning" not in s.proc.stderr.read()  # a key from a file is not a flag


AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


# -- case 5: DNS rebinding, CSRF, cross-origin --------------------------------------------------
def test_case5_a_foreign_host_header_is_refused(guarded):
    for host, code in (("evil.example", 403), (f"evil.example:{guarded.port}", 403),
                       (f"127.0.0.1:{guarded.port}", 200), (f"localhost:{guarded.port}", 200),
                       ("led.example", 200)):
        status, _, body = call(guarded.port, "POST", "/v1/chat/completions",
                               {**AUTH, "Host": host}, BODY)
        assert status == code, (host, body)
        if code == 403:
            assert json.loads(body)["error"]["code"] == "host_not_allowed"
    assert call(guarded.port, "GET", "/health", {"Host": "evil.example"}, None)[0] == 403


def test_case5_a_post_that_is_not_json_is_refused(guarded):
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, _, body = post(guarded.port, Authorization=f"Bearer {KEY}", Content_Type=ctype)
        assert status == 415 and json.loads(body)["error"]["code"] == "unsupported_media_type"
    status, _, _ = post(guarded.port, Authorization=f"Bearer {KEY}",
                        Content_Type="application/json; charset=utf-8")
    assert status == 200


def test_case5_cross_origin_requests_need_cors_origin(guarded):
    status, headers, body = call(guarded.port, "POST", "/v1/chat/completions",
                                 {**AUTH, "Origin": "http://evil.example"}, BODY)
    assert status == 403 and json.loads(body)["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in headers
    status, headers, _ = call(guarded.port, "POST", "/v1/chat/completions",
                              {**AUTH, "Origin": "http://localhost:3000"}, BODY)
    assert status == 200 and headers["access-control-allow-origin"] == "http://localhost:3000"
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = call(guarded.port, "OPTIONS", "/v1/chat/completions", preflight)
    assert status == 204 and "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"]
    status, _, _ = call(guarded.port, "OPTIONS", "/v1/chat/completions",
                        {**preflight, "Origin": "http://evil.example"})
    assert status == 403
    own = f"http://127.0.0.1:{guarded.port}"  # the server's own origin is not cross-origin
    assert call(guarded.port, "POST", "/v1/chat/completions", {**AUTH, "Origin": own},
                BODY)[0] == 200


# -- case 11: a temperature whose 1/T overflows is refused, never NaN -----------------------------
def test_case11_a_tiny_temperature_is_a_400_not_nan(guarded, tmp_path):
    for t in (1e-39, 1e-30, 5e-7):
        body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                           "temperature": t, "logprobs": True, "stream": True}).encode()
        status, _, text = post(guarded.port, body, Authorization=f"Bearer {KEY}")
        assert status == 400 and json.loads(text)["error"]["param"] == "temperature", text
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                       "temperature": 0, "logprobs": True}).encode()
    status, _, text = post(guarded.port, body, Authorization=f"Bearer {KEY}")
    assert status == 200 and "NaN" not in text.decode()
    r = run("serve", tmp_path / "absent.gguf", "-t", "1e-39")
    assert r.exit_code == 2 and "--temperature must be 0 (greedy) or >=" in r.stderr


# -- case 6: the key from a file or the environment; a flag is warned about ----------------------
def test_case6_api_key_file_works_and_a_key_flag_is_warned(guarded, tmp_path):
    assert post(guarded.port, Authorization=f"Bearer {KEY}")[0] == 200
    assert post(guarded.port, Authorization="Bearer wrong")[0] == 401
    absent = tmp_path / "absent.gguf"  # fails after the key checks, before any model
    r = run("serve", absent, "--api-key", KEY, "--port", "0")
    assert "warning: --api-key on the command line is visible" in r.stderr
    r = CliRunner(env={"LED_LOCAL_API_KEY": KEY}).invoke(main, ["serve", str(absent),
                                                                "--port", "0"])
    assert r.exit_code == 2 and "warning" not in r.stderr
    keyfile = tmp_path / "k"
    keyfile.write_text(KEY)
    r = run("serve", absent, "--api-key", KEY, "--api-key-file", keyfile)
    assert r.exit_code == 2 and "not both" in r.stderr
    keyfile.write_text("\n")
    r = run("serve", absent, "--api-key-file", keyfile)
    assert r.exit_code == 2 and "is empty" in r.stderr


# -- case 22: a non-ASCII key is refused at start, in one line ----------------------------------
def test_case22_a_non_ascii_key_is_refused_at_start(tmp_path):
    keyfile = tmp_path / "k"
    keyfile.write_text("clé-secrète\n", encoding="utf-8")
    r = run("serve", tmp_path / "absent.gguf", "--api-key-file", keyfile)
    assert r.exit_code == 2 and "printable ASCII" in r.stderr
    assert r.stderr.count("\n") == 1


# -- case 20: bind before loading, one line, the real port announced ----------------------------
def test_case20_a_port_in_use_or_a_bogus_host_is_one_line_before_loading(smollm2):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-c", "from led_local.cli import main; main()",
                            "serve", str(smollm2), "--port", str(port)], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and "cannot listen on 127.0.0.1" in p.stderr, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "http://" not in p.stderr
    assert time.monotonic() - t0 < 30
    r = run("serve", smollm2, "--host", "bogus.invalid")
    assert r.exit_code == 2 and "unknown host" in r.stderr


def test_case20_port_0_announces_the_real_port(smollm2):
    proc = subprocess.Popen([sys.executable, "-c", "from led_local.cli import main; main()",
                             "serve", str(smollm2), "--port", "0", "--threads", "1", "--ctx",
                             "256"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        assert m and m.group(1) != "0", line
        assert call(int(m.group(1)), "GET", "/health", {}, None)[0] == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


# -- cases 19 and 17: --max-queue 0 means no waiting; requests count from arrival --------------
def test_case19_and_17_max_queue_0_and_partial_uploads_count(smollm2):
    s = Server(smollm2, "--parallel", "1", "--max-queue", "0", "--ctx", "256", "--threads",
               "1")
    try:
        assert post(s.port)[0] == 200  # case 19: a free slot, no queue: served
        # case 17: a request still uploading its body holds its place
        conn = socket.create_connection(("127.0.0.1", s.port))
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{")
        deadline = time.monotonic() + 10
        while True:
            status, headers, body = post(s.port)
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 503 and json.loads(body)["error"]["code"] == "queue_full"
        assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"
        conn.close()
        deadline = time.monotonic() + 10
        while post(s.port)[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        assert s.stop() == 0


# -- case 27: --ctx is checked as given; a burst fills every slot and the whole queue ----------
def test_case27_ctx_is_reported_as_given(smollm2):
    r = run("serve", smollm2, "--ctx", "-5", "--parallel", "4")
    assert r.exit_code == 2 and "got -5" in r.stderr


def test_case27_a_burst_fills_the_slots_and_the_queue(smollm2):
    s = Server(smollm2, "--parallel", "4", "--max-queue", "8", "--ctx", "256", "--threads",
               "1")
    try:
        codes: list[int] = []
        body = json.dumps({"messages": [{"role": "user", "content": "Count to 100."}],
                           "max_tokens": 120, "method": "greedy"}).encode()

        def one() -> None:
            codes.append(post(s.port, body)[0])

        threads = [threading.Thread(target=one) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes.count(200) >= 12 and set(codes) <= {200, 503}, codes
    finally:
        assert s.stop() == 0


# -- cases 18 and 25: SIGTERM with requests in flight; a client leaving mid-upload -------------
def test_case18_and_25_sigterm_answers_in_flight_requests_with_503(smollm2):
    s = Server(smollm2, "--parallel", "1", "--max-queue", "2", "--ctx", "512", "--threads",
               "1")
    try:
        # case 25: a client that leaves during its upload is one line in the log
        conn = socket.create_connection(("127.0.0.1", s.port))
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        time.sleep(0.5)
        conn.close()
        time.sleep(0.5)
        long = json.dumps({"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 2000,
                           "method": "greedy", "stream": True}).encode()
        stream = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
        stream.request("POST", "/v1/completions", long,
                       {"Content-Type": "application/json"})
        resp = stream.getresponse()
        assert resp.status == 200
        resp.readline()  # the stream has begun
        queued: list[tuple[int, bytes]] = []
        waiter = threading.Thread(target=lambda: queued.append(post(s.port)[::2]))
        waiter.start()
        deadline = time.monotonic() + 30
        while s.health()["queue"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        rest = resp.read().decode()
        waiter.join(60)
        assert s.proc.wait(timeout=30) == 0
        events = [line[6:] for line in rest.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert "shutting down" in json.loads(events[-2])["error"]["message"]
        (status, body), = queued
        assert status == 503 and "shutting down" in json.loads(body)["error"]["message"]
        err = s.proc.stderr.read()
        assert "Traceback" not in err and "CancelledError" not in err, err
        assert err.count("left during its upload") == 1
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


# -- case 12: idle and partial connections are bounded and timed out ---------------------------
def test_case12_idle_connections_never_starve_the_server(smollm2):
    import resource

    limit = 200  # file descriptors: the server may hold fewer connections than sockets open

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    port = Server.__init__.__globals__["_free_port"]()
    proc = subprocess.Popen([sys.executable, "-c", "from led_local.cli import main; main()",
                             "serve", str(smollm2), "--port", str(port), "--threads", "1",
                             "--ctx", "256", "--request-timeout", "2"], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=cap)
    idle: list[socket.socket] = []
    try:
        assert "led-local serve:" in proc.stderr.readline()
        for _ in range(400):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t0 = time.monotonic()
        assert call(port, "GET", "/health", {}, None)[0] == 200
        assert post(port)[0] == 200
        assert time.monotonic() - t0 < 30
        partial.settimeout(10)
        assert partial.recv(100) == b""  # the unfinished request was closed by the timeout
        assert time.monotonic() - t0 < 12
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        err = proc.stderr.read()
        proc.wait(timeout=30)
    assert err.count("Traceback") == 0 and len(err.splitlines()) < 10, err[-3000:]


# -- case 7: SIGTERM during a long prompt evaluation never frees the model under it -------------
def test_case7_sigterm_during_a_long_prefill_exits_0(smollm2):
    s = Server(smollm2, "--parallel", "1", "--ctx", "4096", "--threads", "1")
    try:
        body = json.dumps({"prompt": "apple banana cherry " * 900, "max_tokens": 4,
                           "method": "greedy"}).encode()
        answer: list[tuple[int, float]] = []

        def one() -> None:
            status = call(s.port, "POST", "/v1/completions",
                          {"Content-Type": "application/json"}, body)[0]
            answer.append((status, time.monotonic()))

        client = threading.Thread(target=one)
        client.start()
        time.sleep(2)  # tokenized and taken: its prompt is being evaluated
        assert s.health()["queue"] == 0 and not answer
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        client.join(60)
        assert answer and answer[0][0] == 503 and answer[0][1] - t0 < 15
        assert s.proc.wait(timeout=600) == 0
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
