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


# -- against llama-server (`python bench/serve_bench.py MODEL --against llama-server`) --------
#
# `led-local serve` and llama.cpp's llama-server (`make llama-server`: the same patched sources,
# backend and compiler flags) on the same model, slots and threads, measured in turns: each
# repeat starts each server afresh, in an order that rotates, and runs every case on it, so
# that machine noise falls on both alike. Cases: 1, 4 and 8 streaming chat clients of two
# requests each (GSM8K questions, the same seeds, `--tokens` answers) and a long context (one
# client, a ~4k-token text to continue through /v1/completions, `--long-tokens` generated).
# led-local runs plain sampling (`method: sample`) and LED; llama-server plain sampling with
# the same sampler settings (temperature 0.6, top-k 20, top-p 0.95, min-p 0: led-local's
# defaults). Reported: medians over the repeats, their spread (min-max), and ratios of
# medians; generated tokens are counted from each server's usage (neither forces a length).

SAMPLING = {"temperature": 0.6, "top_k": 20, "top_p": 0.95, "min_p": 0.0}
LLAMA_SERVER = ROOT / "build" / "llama-tools" / "bin" / "llama-server"
LLAMA_BATCHED_BENCH = ROOT / "build" / "llama-tools" / "bin" / "llama-batched-bench"


def _wait_health(proc: subprocess.Popen, port: int, what: str) -> None:
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def start_led_local(model: str, port: int, *, parallel: int, threads: int,
                    ctx: int) -> subprocess.Popen:
    args = [sys.executable, "-c", "from led_local.cli import main; main()", "serve", model,
            "--port", str(port), "--parallel", str(parallel), "--ctx", str(ctx),
            "--threads", str(threads)]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_health(proc, port, "led-local serve")
    return proc


def start_llama_server(binary: Path, model: str, port: int, *, parallel: int, threads: int,
                       ctx: int) -> subprocess.Popen:
    """llama-server with its defaults (flash attention auto: on for the CPU) but for what must
    match: slots (each its own KV stream, as with an explicit -np), context per slot, threads
    (generation and batch), no web UI."""
    args = [str(binary), "-m", model, "--port", str(port), "-np", str(parallel),
            "-c", str(ctx * parallel), "-t", str(threads), "-tb", str(threads), "--no-webui"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_health(proc, port, str(binary))
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _post_stream(port: int, path: str, body: dict) -> tuple[float, float, int]:
    """One streaming request: (TTFT s, total s, completion tokens). Tokens come from the final
    usage (both servers send it with include_usage), else from the number of text chunks."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, tokens, pieces = None, 0, 0
    with urllib.request.urlopen(req, timeout=3600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens", 0)
            for c in chunk.get("choices", []):
                delta = c.get("delta") or {}
                piece = (delta.get("content") or delta.get("reasoning_content")
                         or c.get("text") or "")
                if piece:
                    pieces += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), total, tokens or pieces


def chat_rate(port: int, questions: list[str], n: int, tokens: int, extra: dict) -> float:
    """n streaming clients of two chat requests each: generated tokens/s over the wall time.
    Every answer runs to ``tokens`` (``ignore_eos``, which both servers take): the same work
    on both sides, whatever the sampled text. Client i asks questions 2i and 2i + 1: give
    every call questions the server has not seen, or its prompt cache decides the result."""
    total = [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(2):
            q = questions[(2 * i + r) % len(questions)]
            body = {"messages": [{"role": "user", "content": q}], "max_tokens": tokens,
                    "seed": 100 * i + r, "ignore_eos": True, **extra}
            _, _, n_tok = _post_stream(port, "/v1/chat/completions", body)
            with lock:
                total[0] += n_tok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0] / (time.perf_counter() - t0)


def long_text(model: str, n_tokens: int) -> str:
    """About ``n_tokens`` tokens (the model's tokenizer) of plain text to continue: GSM8K
    questions one after another, different each time so that no prompt cache helps."""
    from led_local.eval.problems import load_problems
    from led_local.llama.runtime import Runtime

    with Runtime(model, vocab_only=True) as rt:
        text = ""
        for p in load_problems("gsm8k"):
            text += p.question + "\n\n"
            if len(text) > 3 * n_tokens and len(rt.tokenize(text)) >= n_tokens:
                break
        ids = rt.tokenize(text)[:n_tokens]
        return b"".join(rt.token_bytes(t) for t in ids).decode("utf-8", "replace")


def long_case(port: int, prompt: str, tokens: int, extra: dict,
              seed: int) -> tuple[float, float, int]:
    """The long context: (prompt time = TTFT s, generation tokens/s after it, tokens)."""
    body = {"prompt": prompt, "max_tokens": tokens, "seed": seed, "ignore_eos": True, **extra}
    ttft, total, n_tok = _post_stream(port, "/v1/completions", body)
    return ttft, (n_tok - 1) / max(total - ttft, 1e-9), n_tok


def bench_against_llama_server(model: str, *, binary: Path, threads: int, parallel: int,
                               tokens: int, repeats: int, clients: tuple[int, ...],
                               long_prompt: int, long_tokens: int,
                               methods: tuple[str, ...] = ("plain", "led")) -> dict:
    from led_local.eval.problems import load_problems

    # no prompt twice in one server's life: each server's prompt cache (llama-server also
    # keeps evicted prompts in host memory) would turn a repeated question into a cache
    # hit, and the two caches keep different prompts; both servers get the same questions
    per_method = 2 * sum(clients)
    questions = [p.question for p in load_problems("gsm8k")[:2 * per_method]]
    texts = [long_text(model, long_prompt) + f"\n\n({i})" for i in range(2 * repeats)]
    ctx = max(2048, long_prompt + long_tokens + 256)
    # LED takes the temperature alone (it refuses top-k/top-p/min-p, which it does not use)
    systems = {"llama-server": [("plain", SAMPLING)],
               "led-local": [("plain", {"method": "sample", **SAMPLING}),
                             ("led", {"method": "led", "temperature": SAMPLING["temperature"]})]}
    systems["led-local"] = [m for m in systems["led-local"] if m[0] in methods]
    res: dict[tuple[str, str, str], list[float]] = {}
    for r in range(repeats):
        order = list(systems) if r % 2 == 0 else list(reversed(systems))
        for name in order:
            port = _port()
            if name == "llama-server":
                proc = start_llama_server(binary, model, port, parallel=parallel,
                                          threads=threads, ctx=ctx)
            else:
                proc = start_led_local(model, port, parallel=parallel, threads=threads, ctx=ctx)
            try:
                _post_stream(port, "/v1/chat/completions",
                             {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
                for k, (method, extra) in enumerate(systems[name]):
                    asked = k * per_method
                    for n in clients:
                        rate = chat_rate(port, questions[asked:asked + 2 * n], n, tokens, extra)
                        asked += 2 * n
                        res.setdefault((name, method, f"{n} clients"), []).append(rate)
                        print(f"  repeat {r + 1} {name:12} {method:5} {n} clients: "
                              f"{rate:7.1f} tokens/s", flush=True)
                    prompt = texts[2 * r + k]  # plain: the same text on both servers
                    ttft, rate, n_tok = long_case(port, prompt, long_tokens, extra, seed=r)
                    res.setdefault((name, method, "long: generation"), []).append(rate)
                    res.setdefault((name, method, "long: prompt s"), []).append(ttft)
                    print(f"  repeat {r + 1} {name:12} {method:5} long: prompt {ttft:.2f}s, "
                          f"{n_tok} tokens at {rate:.1f} tokens/s", flush=True)
            finally:
                stop(proc)
    return res


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.1f} ({min(xs):.1f}-{max(xs):.1f})"


def report_against(res: dict, *, model: str, threads: int, parallel: int, tokens: int,
                   repeats: int, long_prompt: int, long_tokens: int) -> None:
    print(f"\nserve against llama-server: {Path(model).name}, {parallel} slots, {threads} "
          f"threads, {tokens}-token answers (long: {long_prompt}-token prompt, {long_tokens} "
          f"generated), {repeats} repeats, median (min-max)")
    cases = sorted({c for _, _, c in res}, key=lambda c: (not c[0].isdigit(), len(c), c))
    print(f"{'case':18} {'llama-server':>22} {'led-local plain':>22} {'ratio':>6} "
          f"{'led-local LED':>22} {'LED/plain ll-s':>14}")
    for case in cases:
        base = res[("llama-server", "plain", case)]
        plain = res[("led-local", "plain", case)]
        led = res.get(("led-local", "led", case))
        m = statistics.median
        print(f"{case:18} {_spread(base):>22} {_spread(plain):>22} {m(plain) / m(base):6.2f} "
              + (f"{_spread(led):>22} {m(led) / m(base):14.2f}" if led else f"{'-':>22}"))
    print("(tokens/s, except 'long: prompt s': seconds to the first token, where a ratio "
          "under 1 means led-local is faster)")


# -- solve against llama-batched-bench (`--against llama-batched-bench`) ----------------------
#
# Offline batched throughput: `solve`'s batch loop (2 GSM8K problems x P samples at --parallel
# P, the prompt evaluated once per problem and shared, every answer run to `--tokens` with the
# end tokens banned, as the other side decodes; plain sampling and LED) against
# llama.cpp's llama-batched-bench built from the same sources (`-npp` the same prompt length,
# `-ntg --tokens`, `-npl P`, `-pps`: the prompt shared, as solve shares it), which decodes the
# same shapes without sampling or any host work: an upper bound. Generated tokens per second
# of wall time, prompt included, both sides; and the long context, one sample of a ~4k-token
# prompt with `--long-tokens` generated. Repeats alternate the two.

def _batched_bench(binary: Path, model: str, *, threads: int, prompt: int, tokens: int,
                   parallel: int) -> float:
    """llama-batched-bench's generated tokens/s over its whole time (prompt + generation)."""
    ctx = parallel * (prompt + tokens + 64)
    out = subprocess.run([str(binary), "-m", model, "-c", str(ctx), "-b", "2048", "-ub", "512",
                          "-npp", str(prompt), "-ntg", str(tokens), "-npl", str(parallel),
                          "-pps", "-t", str(threads), "-tb", str(threads)],
                         capture_output=True, text=True, check=True)
    for line in (out.stdout + out.stderr).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            tg, b, t = int(cells[1]), int(cells[2]), float(cells[8])
            return tg * b / t
    raise RuntimeError("llama-batched-bench printed no result row:\n" + out.stdout[-2000:])


def _solve_rate(model: str, problems, *, threads: int, parallel: int, samples: int,
                tokens: int, method: str) -> tuple[float, int]:
    """solve's batch loop (``run_jobs``: each problem's prompt evaluated once and shared by its
    samples, up to ``parallel`` decoding together, on solve's engine) over ``problems`` x
    ``samples``, every sample run to ``tokens`` as llama-batched-bench runs them: (generated
    tokens/s over the loop's wall time, prompts included; tokens generated)."""
    from led_local.decoding.batch import Job, run_jobs
    from led_local.decoding.methods import DecodeConfig
    from led_local.eval.planning import SolveOptions
    from led_local.eval.solve import make_engine
    from led_local.llama.gguf_info import model_info

    info = model_info(model)
    prompts = _solve_prompts(model, problems)
    jobs = [Job(p.id, i, prompts[p.id]) for p in problems for i in range(samples)]
    opts = SolveOptions(samples=samples, parallel=parallel, max_tokens=tokens, threads=threads)
    engine, parallel = make_engine(info, DecodeConfig(method=method), opts, n_jobs=len(jobs),
                                   longest_prompt=max(len(t) for t in prompts.values()))
    with engine:
        t0 = time.perf_counter()
        n = sum(len(f.seq.tokens) for f in run_jobs(engine, jobs, parallel=parallel,
                                                    max_tokens=tokens, seed=0, ignore_eos=True))
        return n / (time.perf_counter() - t0), n


def _solve_prompts(model: str, problems) -> dict[str, tuple[int, ...]]:
    """solve's prompt token ids for ``problems`` (chat template applied), by problem id."""
    from led_local.eval.planning import _prompts
    from led_local.eval.problems import REFERENCE_PROMPT
    from led_local.llama.runtime import Runtime

    with Runtime(model, vocab_only=True) as vocab:
        chats, _, _ = _prompts(vocab, problems, REFERENCE_PROMPT)
        return {pid: tuple(vocab.tokenize(text)) for pid, text in chats.items()}


def _prompt_tokens(model: str, problems) -> int:
    """The mean length in tokens of solve's prompts for ``problems``."""
    return round(statistics.mean(len(t) for t in _solve_prompts(model, problems).values()))


def bench_against_batched(model: str, *, binary: Path, threads: int, tokens: int, repeats: int,
                          parallels: tuple[int, ...], long_prompt: int,
                          long_tokens: int) -> dict:
    from led_local.eval.problems import Problem, load_problems

    problems = load_problems("gsm8k")[:2]
    n_prompt = _prompt_tokens(model, problems)
    long = [Problem(id=f"long-{r}", question=long_text(model, long_prompt) + f" ({r})",
                    answer=None) for r in range(repeats)]
    n_long = _prompt_tokens(model, long[:1])
    res: dict[tuple[str, str, str], list[float]] = {}
    for r in range(repeats):
        for first in ((True, False) if r % 2 == 0 else (False, True)):
            for p in parallels:
                case = f"--parallel {p}"
                if first:
                    rate = _batched_bench(binary, model, threads=threads, prompt=n_prompt,
                                          tokens=tokens, parallel=p)
                    res.setdefault(("llama-batched-bench", "plain", case), []).append(rate)
                    print(f"  repeat {r + 1} llama-batched-bench {case}: {rate:.1f} tokens/s",
                          flush=True)
                    continue
                for method in ("sample", "led"):
                    rate, n = _solve_rate(model, problems, threads=threads, parallel=p,
                                          samples=p, tokens=tokens, method=method)
                    name = "plain" if method == "sample" else "led"
                    res.setdefault(("solve", name, case), []).append(rate)
                    print(f"  repeat {r + 1} solve {name:5} {case}: {n} tokens, "
                          f"{rate:.1f} tokens/s", flush=True)
            case = "long (1 sample)"
            if first:
                rate = _batched_bench(binary, model, threads=threads, prompt=n_long,
                                      tokens=long_tokens, parallel=1)
                res.setdefault(("llama-batched-bench", "plain", case), []).append(rate)
                print(f"  repeat {r + 1} llama-batched-bench long: {rate:.1f} tokens/s",
                      flush=True)
                continue
            for method in ("sample", "led"):
                rate, n = _solve_rate(model, [long[r]], threads=threads, parallel=1, samples=1,
                                      tokens=long_tokens, method=method)
                name = "plain" if method == "sample" else "led"
                res.setdefault(("solve", name, case), []).append(rate)
                print(f"  repeat {r + 1} solve {name:5} long: {n} tokens, {rate:.1f} tokens/s",
                      flush=True)
    return res


def report_against_batched(res: dict, *, model: str, threads: int, tokens: int, repeats: int,
                           long_tokens: int) -> None:
    print(f"\nsolve against llama-batched-bench: {Path(model).name}, {threads} threads, "
          f"{tokens}-token answers (long: {long_tokens}), {repeats} repeats, generated "
          "tokens/s over the whole run, median (min-max)")
    cases = sorted({c for _, _, c in res}, key=lambda c: (c.startswith("long"), len(c), c))
    print(f"{'case':16} {'batched-bench':>22} {'solve plain':>22} {'ratio':>6} "
          f"{'solve LED':>22} {'ratio':>6}")
    m = statistics.median
    for case in cases:
        base = res[("llama-batched-bench", "plain", case)]
        plain, led = res[("solve", "plain", case)], res[("solve", "led", case)]
        print(f"{case:16} {_spread(base):>22} {_spread(plain):>22} {m(plain) / m(base):6.2f} "
              f"{_spread(led):>22} {m(led) / m(base):6.2f}")


def main() -> None:
    import argparse

    from led_local.llama.runtime import default_threads

    ap = argparse.ArgumentParser(description="led-local against llama.cpp's own tools, built "
                                 "by `make llama-server` from the same patched sources")
    ap.add_argument("model")
    ap.add_argument("--against", choices=["llama-server", "llama-batched-bench"],
                    required=True)
    ap.add_argument("--binary", type=Path, default=None,
                    help="the llama.cpp tool [default: build/llama-tools/bin/<--against>]")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--parallel", type=int, default=8, help="slots of both servers")
    ap.add_argument("--methods", default="plain,led", help="led-local's methods (serve): "
                    "plain, led or both")
    ap.add_argument("--clients", default="1,4,8", help="client counts (serve, '' for the long "
                    "case alone), --parallel "
                    "values (solve)")
    ap.add_argument("--tokens", type=int, default=128, help="tokens an answer may have")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-prompt", type=int, default=4096, help="long case: prompt tokens")
    ap.add_argument("--long-tokens", type=int, default=512, help="long case: tokens generated")
    args = ap.parse_args()
    counts = tuple(int(c) for c in args.clients.split(",") if c.strip())
    default = LLAMA_SERVER if args.against == "llama-server" else LLAMA_BATCHED_BENCH
    binary = args.binary or default
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: run `make llama-server`")
    kw = dict(threads=args.threads, tokens=args.tokens, repeats=args.repeats,
              long_tokens=args.long_tokens)
    if args.against == "llama-server":
        res = bench_against_llama_server(args.model, binary=binary, parallel=args.parallel,
                                         clients=counts, long_prompt=args.long_prompt,
                                         methods=tuple(args.methods.split(",")), **kw)
        report_against(res, model=args.model, parallel=args.parallel,
                       long_prompt=args.long_prompt, **kw)
    else:
        res = bench_against_batched(args.model, binary=binary, parallels=counts,
                                    long_prompt=args.long_prompt, **kw)
        report_against_batched(res, model=args.model, **kw)


if __name__ == "__main__":
    main()
