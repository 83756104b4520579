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


def _start(model: str, port: int, parallel: int, threads: int | None, *extra: str,
           src: Path = ROOT) -> subprocess.Popen:
    args = [sys.executable, "-c", "from led_local.cli import main; main()", "serve", model,
            "--port", str(port), "--parallel", str(parallel), "--ctx", "2048", *extra]
    if threads:
        args += ["--threads", str(threads)]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(src)},
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def _stream(port: int, body: dict, arrivals: list[float] | None = None
            ) -> tuple[float, int, str]:
    """One streaming chat request: (TTFT seconds, completion tokens, text); ``arrivals``
    gets the arrival time of every chunk with text."""
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
                if piece and arrivals is not None:
                    arrivals.append(time.perf_counter())
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


LONG = ("A farmer keeps a ledger of every sale at the market, noting the weight, the price per "
        "kilogram and the buyer's name, and at the end of each week adds the totals. ") * 40


STORY = "Write a long story about a dragon who learns to cook."


def _fair_run(port: int, *, long_prompts: int, tokens: int) -> tuple[list[float], float, int]:
    """One running stream of ``tokens`` tokens; after its 20th chunk, ``long_prompts``
    requests with ~1,500-token prompts arrive at once. Returns the stream's gaps between
    chunks (after the 20th), the wall time and all completion tokens."""
    arrivals: list[float] = []
    done: list[int] = []

    def long(i: int) -> None:
        _, n, _ = _stream(port, {"messages": [{"role": "user", "content": f"{i}. {LONG}"}],
                                 "max_tokens": 16, "seed": i, "cache_prompt": False})
        done.append(n)

    others = [threading.Thread(target=long, args=(i,)) for i in range(long_prompts)]

    finished = threading.Event()

    def watch() -> None:
        while len(arrivals) < 20 and not finished.is_set():
            time.sleep(0.005)
        for t in others:
            t.start()

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.perf_counter()
    # a prompt and seed on which the bundled model writes its whole ``tokens`` (400)
    _, n_stream, _ = _stream(port, {"messages": [{"role": "user", "content": STORY}],
                                    "max_tokens": tokens, "seed": 7, "method": "sample",
                                    "temperature": 1.0}, arrivals)
    finished.set()
    watcher.join()
    for t in others:
        t.join()
    wall = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(arrivals[20:], arrivals[21:])]
    return gaps, wall, n_stream + sum(done)


def bench_fairness(model: str, *, threads: int | None, chunks: tuple[int | None, ...] = (
        None, 16, 64, 256), src: Path = ROOT, repeats: int = 2) -> None:
    """The inter-chunk gap of a running stream while 3 long prompts arrive, per
    ``--prefill-chunk`` (None: the server's own default, auto here, or whatever a source
    tree from before the option did): idle p99, loaded p50/p99/max, and the aggregate tokens/s."""
    print(f"fair scheduling: {Path(model).name}, --parallel 4, a 400-token stream, 3 prompts "
          f"of ~1,500 tokens arriving at its 20th chunk, {repeats} runs each, source {src}")
    print(f"{'chunk':>6} {'idle p99':>9} {'p50':>7} {'p99':>7} {'max':>7} {'p99/idle':>9} "
          f"{'tokens/s':>9}")
    for chunk in chunks:
        port = _port()
        extra = () if chunk is None else ("--prefill-chunk", str(chunk))
        proc = _start(model, port, 4, threads, *extra, src=src)
        try:
            _stream(port, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            idle, loaded, rates = [], [], []
            for _ in range(repeats):
                gaps, _, _ = _fair_run(port, long_prompts=0, tokens=400)
                idle += gaps
                gaps, wall, n = _fair_run(port, long_prompts=3, tokens=400)
                loaded += gaps
                rates.append(n / wall)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        i99, l99 = _pct(idle, 0.99), _pct(loaded, 0.99)
        label = chunk or ("auto" if src == ROOT else "none")
        print(f"{label:>6} {i99 * 1000:7.0f}ms {_pct(loaded, 0.5) * 1000:5.0f}ms "
              f"{l99 * 1000:5.0f}ms {max(loaded) * 1000:5.0f}ms {l99 / i99:9.1f} "
              f"{statistics.median(rates):9.1f}", flush=True)
