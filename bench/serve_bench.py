"""``bench.py --what serve``: `led-local serve` under 1, 4 and 8 streaming clients.

Per client count: aggregate generated tokens/s over the wall time, time to first token (TTFT)
p50/p95; then a two-turn chat's turn-2 TTFT with the prompt cache and without it
(``cache_prompt: false``); then ``solve``'s batched tokens/s at the same parallelism (8), in
this process after the server has stopped, and the ratio serve / solve.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = ("You are a careful tutor. Explain each step of your reasoning in plain words, check "
          "the arithmetic twice, and finish with the final answer on its own line. ") * 6


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: str, port: int, parallel: int, threads: int | None) -> subprocess.Popen:
    args = [sys.executable, "-c", "from led_local.cli import main; main()", "serve", model,
            "--port", str(port), "--parallel", str(parallel), "--ctx", "2048"]
    if threads:
        args += ["--threads", str(threads)]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def _stream(port: int, body: dict) -> tuple[float, int, str]:
    """One streaming chat request: (TTFT seconds, completion tokens, text)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    text = ""
    with urllib.request.urlopen(req, timeout=3600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk["choices"]:
                piece = c["delta"].get("content") or c["delta"].get("reasoning_content") or ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
                text += c["delta"].get("content") or ""
    return ttft if ttft is not None else time.perf_counter() - t0, tokens, text


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _clients(port: int, questions: list[str], n: int, tokens: int) -> tuple[float, list[float]]:
    """n clients, each streaming two requests one after the other: (tokens/s, TTFTs)."""
    ttfts: list[float] = []
    total = [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(2):
            q = questions[(2 * i + r) % len(questions)]
            ttft, n_tok, _ = _stream(port, {"messages": [{"role": "user", "content": q}],
                                            "max_tokens": tokens, "seed": 100 * i + r})
            with lock:
                ttfts.append(ttft)
                total[0] += n_tok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0] / (time.perf_counter() - t0), ttfts


def _turn2(port: int, question: str, *, cache: bool, tokens: int) -> float:
    """TTFT of a chat's second turn (the whole conversation resent, as front-ends do)."""
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    _, _, reply = _stream(port, {"messages": msgs, "max_tokens": tokens, "seed": 1})
    msgs += [{"role": "assistant", "content": reply},
             {"role": "user", "content": "Now check your answer once more."}]
    ttft, _, _ = _stream(port, {"messages": msgs, "max_tokens": 4, "seed": 2,
                                "cache_prompt": cache})
    return ttft


def bench_serve(model: str, *, tokens: int, threads: int | None, parallel: int = 8) -> None:
    from led_local.decoding.methods import DecodeConfig
    from led_local.eval.problems import REFERENCE_PROMPT, load_problems
    from led_local.eval.solve import SolveOptions, solve

    items = load_problems("gsm8k")[:16]
    questions = [p.question for p in items]
    port = _port()
    proc = _start(model, port, parallel, threads)
    rows = []
    try:
        _stream(port, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        for n in (1, 4, 8):
            rate, ttfts = _clients(port, questions, n, tokens)
            rows.append((n, rate, _pct(ttfts, 0.5), _pct(ttfts, 0.95)))
            print(f"  {n} clients: {rate:.1f} tokens/s", flush=True)
        warm = [_turn2(port, q, cache=True, tokens=tokens) for q in questions[:3]]
        cold = [_turn2(port, q, cache=False, tokens=tokens) for q in questions[3:6]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    with tempfile.TemporaryDirectory() as tmp:
        opts = SolveOptions(samples=parallel, parallel=parallel, max_tokens=tokens,
                            threads=threads)
        p = solve(model, items[:2], Path(tmp) / "run.jsonl", DecodeConfig(method="led"), opts,
                  template=REFERENCE_PROMPT)
        solve_rate = p.tokens / (time.perf_counter() - p.start)
    print(f"serve benchmark: {Path(model).name}, LED, --parallel {parallel}, streaming clients "
          f"of 2 requests x {tokens} tokens each")
    print(f"{'clients':>7} {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p95':>9}")
    for n, rate, p50, p95 in rows:
        print(f"{n:7} {rate:9.1f} {p50:8.2f}s {p95:8.2f}s")
    print(f"turn-2 TTFT (median of 3): prompt cache {statistics.median(warm):.3f}s, "
          f"without {statistics.median(cold):.3f}s")
    ratio = rows[-1][1] / solve_rate
    print(f"solve --parallel {parallel} (LED, 2 problems x {parallel} samples): "
          f"{solve_rate:.1f} tokens/s; serve with 8 clients / solve = {ratio:.2f}")
