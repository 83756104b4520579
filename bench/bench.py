"""led-local benchmarks (``make bench``): ratios measured side by side in one run.

decode: one prompt decoded with --method sample and with LED (gated, always-exploring, both
capture paths, and the in-graph projection where the build has it; and with the depth logits'
8-bit rounding left in, as before they were exact), rounds interleaved so machine noise hits
every variant alike.
batch: generated tokens/s of ``solve`` with --parallel 16 versus --parallel 1, for sample and
LED (host projection, and in-graph where the build has it), on the same GSM8K problems.
bufts: the build's default (CPU extra buffer types on: the repack kernels; AMX is not compiled
in) against loading the model without extra buffer types, prompt and decode speed.
embed: the cost of ``solve --embed`` (the mean final-norm state per answer), with and without
it on the same problems, --method sample, --parallel 16, runs alternated.
serve: `led-local serve` with 1, 4 and 8 streaming clients, the prompt cache, and solve's
batched throughput at the same parallelism (bench/serve_bench.py).
fair: the gap between a running stream's chunks while 3 long prompts arrive, per
--prefill-chunk (bench/serve_bench.py); --fair-src DIR adds a checkout from before chunked
prefill, measured the same way.
inspect: ``led-local inspect``'s cost per analysed position (teacher-forced decode, ln0 and ln1
projections, the analysis) against one plain decode step, with and without --all-layers.
ray: ``solve --ray`` with 2 local workers (1 CPU and 1 thread each) against ``solve`` in one
process (all cores), LED on the same problems, and the time ``ray.init`` of a local instance
takes (paid once per --ray run without an address).
methods: one prompt decoded with --method sample, hapo and swir (the default window, and a
short window that makes latent steps frequent, with the exact mixture and with the opt-in
--swir-top-mass 0.9 that reads rows from the file), rounds interleaved; plus the memory of
SwiReasoning's float32 embedding matrix.
swir-batch: one ``solve`` step of 16 sequences of which L are in latent mode, decoded as one
all-embedding batch (what the engine does: token rows go as their input rows) against a token
decode plus an embedding decode, steps interleaved; the design choice rests on it.
slots: in a batch-invariant context (the server's: one KV stream per slot), one decode step of
sequences in consecutive slots against the same number with holes between them (llama.cpp
evaluates each run of consecutive slots as its own ubatch), and 8 prompts evaluated into their
slots one after another against together in one batch per chunk (``Engine.advance_fills``, as
`serve` does), rounds interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from led_local.decoding.engine import Engine  # noqa: E402
from led_local.decoding.generate import generate, generate_step, prompt_tokens  # noqa: E402
from led_local.decoding.methods import DecodeConfig  # noqa: E402
from led_local.decoding.samplers import LEDConfig  # noqa: E402
from led_local.llama import native  # noqa: E402
from led_local.llama.projection import graph_available  # noqa: E402

PROMPT = ("Please reason step by step, and put your final answer within \\boxed{}. "
          "A farmer has 17 sheep and buys 3 more pens of 12 sheep each. He then sells a third "
          "of all his sheep. How many sheep does he have left?")


EIGHT_BIT = " 8-bit"  # a variant whose depth logits keep ggml's 8-bit rounding of the states


def decode_variants() -> dict[str, tuple[DecodeConfig, str, str]]:
    """name -> (config, capture, projection). A name with EIGHT_BIT projects as led-local did
    before its depth logits were exact (``eight_bit``): the cost of exactness, in one run."""
    # think_end "": the whole response in LED's scope, as for a model that never closes it
    led = DecodeConfig(method="led", think_end="")
    always = DecodeConfig(method="led", led=LEDConfig(exploit=False), think_end="")
    variants = {
        "sample": (DecodeConfig(method="sample", think_end=""), "auto", "host"),
        "led (callback)": (led, "callback", "host"),
        f"led{EIGHT_BIT} (callback)": (led, "callback", "host"),
        "led no-exploit (callback)": (always, "callback", "host"),
    }
    if native.layer_inp_patch_version() is not None:
        variants["led (layer-inp)"] = (led, "layer-inp", "host")
        variants[f"led{EIGHT_BIT} (layer-inp)"] = (led, "layer-inp", "host")
        variants["led no-exploit (layer-inp)"] = (always, "layer-inp", "host")
        variants[f"led no-exploit{EIGHT_BIT} (layer-inp)"] = (always, "layer-inp", "host")
    if graph_available():
        variants["led (graph)"] = (led, "auto", "graph")
        variants["led no-exploit (graph)"] = (always, "auto", "graph")
        variants[f"led no-exploit{EIGHT_BIT} (graph)"] = (always, "auto", "graph")
    return variants


def eight_bit(engine: Engine) -> Engine:
    """``engine`` projecting its depth logits with ggml's 8-bit rounding of the states left in
    (led-local's projection before it was exact), host or graph."""
    if engine.head is not None:
        project = engine.head.project
        engine.head.project = lambda states, *, norm, extras=True: project(
            states, norm=norm, exact=False, extras=extras)
    if engine.graph is not None:
        engine.graph.round_type = None
        engine.graph._on = None
        engine.graph.enable(True)
    return engine


def bench_decode(model: str, *, tokens: int, rounds: int, threads: int | None) -> None:
    variants = decode_variants()
    engines = {name: Engine(model, cfg, n_ctx=1024, threads=threads, capture=cap,
                            projection=proj)
               for name, (cfg, cap, proj) in variants.items()}
    for name, engine in engines.items():
        if EIGHT_BIT in name:
            eight_bit(engine)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    explored: dict[str, int] = {}
    generated: dict[str, int] = {}
    try:
        for r in range(rounds):
            for name, engine in engines.items():
                toks = prompt_tokens(engine, PROMPT)
                res = generate(engine, toks, max_tokens=tokens, seed=r)
                rates[name].append(len(res.tokens) / res.decode_s)
                explored[name] = explored.get(name, 0) + sum(d is not None for d in res.depths)
                generated[name] = generated.get(name, 0) + len(res.tokens)
    finally:
        for engine in engines.values():
            engine.close()
    base = statistics.median(rates["sample"])
    print(f"decode benchmark: {Path(model).name}, {tokens} tokens x {rounds} rounds, "
          f"threads={threads or 'default'}")
    print(f"{'variant':34} {'tokens/s':>9} {'x sample':>9} {'explored/token':>15}")
    for name, rs in rates.items():
        med = statistics.median(rs)
        frac = explored[name] / max(1, generated[name])
        print(f"{name:34} {med:9.1f} {med / base:9.2f} {frac:15.2f}")


def bench_bufts(model: str, *, tokens: int, rounds: int, threads: int | None) -> None:
    """Prompt and decode tokens/s with llama.cpp's extra buffer types on (default) and off."""
    import llama_cpp

    defaults = llama_cpp.llama_model_default_params

    def load(extra: bool) -> Engine:
        def params():
            p = defaults()
            p.use_extra_bufts = extra
            return p

        llama_cpp.llama_model_default_params = params
        try:
            return Engine(model, DecodeConfig(method="sample", think_end=""), n_ctx=1024,
                          threads=threads)
        finally:
            llama_cpp.llama_model_default_params = defaults

    engines = {"extra bufts on (default)": load(True), "extra bufts off": load(False)}
    rates = {name: ([], []) for name in engines}
    long_prompt = " ".join([PROMPT] * 6)
    try:
        for r in range(rounds):
            for name, engine in engines.items():
                toks = prompt_tokens(engine, long_prompt, raw=True)
                res = generate(engine, toks, max_tokens=tokens, seed=r)
                rates[name][0].append(len(toks) / res.prompt_s)
                rates[name][1].append(len(res.tokens) / res.decode_s)
    finally:
        for engine in engines.values():
            engine.close()
    print(f"buffer-type benchmark: {Path(model).name}, {tokens} tokens x {rounds} rounds")
    base_p, base_d = (statistics.median(x) for x in rates["extra bufts on (default)"])
    print(f"{'variant':26} {'prompt tok/s':>13} {'ratio':>6} {'decode tok/s':>13} {'ratio':>6}")
    for name, (ps, ds) in rates.items():
        p, d = statistics.median(ps), statistics.median(ds)
        print(f"{name:26} {p:13.1f} {p / base_p:6.2f} {d:13.1f} {d / base_d:6.2f}")


def bench_batch(model: str, problems: str, *, n_problems: int, samples: int, max_tokens: int,
                threads: int | None) -> None:
    """solve's generated tokens/s at --parallel 16 and 1, for sample and for LED (host, and
    graph where the build has it)."""
    import tempfile

    from led_local.eval.problems import REFERENCE_PROMPT, load_problems
    from led_local.eval.solve import SolveOptions, solve

    items = load_problems(problems)[:n_problems]
    rates: dict[tuple[str, int], float] = {}
    runs = [("sample", "sample", "host"), ("led", "led", "host")]
    if graph_available():
        runs.append(("led graph", "led", "graph"))
    with tempfile.TemporaryDirectory() as tmp:
        for name, method, proj in runs:
            for parallel in (16, 1):
                out = Path(tmp) / f"{name.replace(' ', '-')}-{parallel}.jsonl"
                opts = SolveOptions(samples=samples, parallel=parallel, max_tokens=max_tokens,
                                    threads=threads, projection=proj)
                t0 = time.perf_counter()
                p = solve(model, items, out, DecodeConfig(method=method), opts,
                          template=REFERENCE_PROMPT)
                rates[(name, parallel)] = p.tokens / (time.perf_counter() - p.start)
                print(f"  {name:9} --parallel {parallel:2}: {p.tokens} tokens, "
                      f"{time.perf_counter() - t0:.1f}s, {rates[(name, parallel)]:.1f} tokens/s",
                      flush=True)
    print(f"batch benchmark: {Path(model).name}, {n_problems} problems x {samples} samples, "
          f"--max-tokens {max_tokens}")
    print(f"{'method':9} {'P=1 tok/s':>10} {'P=16 tok/s':>11} {'gain':>6}")
    for name, _, _ in runs:
        one, many = rates[(name, 1)], rates[(name, 16)]
        print(f"{name:9} {one:10.1f} {many:11.1f} {many / one:6.2f}x")


def bench_embed(model: str, problems: str, *, n_problems: int, samples: int, max_tokens: int,
                threads: int | None, rounds: int) -> None:
    """solve's generated tokens/s with and without --embed, alternated ``rounds`` times."""
    import tempfile

    from led_local.eval.problems import REFERENCE_PROMPT, load_problems
    from led_local.eval.solve import SolveOptions, solve

    items = load_problems(problems)[:n_problems]
    rates: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for embed in (False, True):
                out = Path(tmp) / f"{r}-{embed}.jsonl"
                opts = SolveOptions(samples=samples, parallel=16, max_tokens=max_tokens,
                                    threads=threads, embed=embed)
                p = solve(model, items, out, DecodeConfig(method="sample"), opts,
                          template=REFERENCE_PROMPT)
                rates[embed].append(p.tokens / (time.perf_counter() - p.start))
                print(f"  round {r} embed={embed!s:5}: {p.tokens} tokens, "
                      f"{rates[embed][-1]:.1f} tokens/s", flush=True)
    plain, embed = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"embed benchmark: {Path(model).name}, {n_problems} problems x {samples} samples, "
          f"--max-tokens {max_tokens}, --parallel 16, {rounds} rounds (median)")
    print(f"{'solve':16} {'tokens/s':>9} {'x plain':>8}")
    print(f"{'sample':16} {plain:9.1f} {1.0:8.2f}")
    print(f"{'sample --embed':16} {embed:9.1f} {embed / plain:8.2f}")


def bench_inspect(model: str, *, tokens: int, rounds: int, threads: int | None) -> None:
    """Seconds per position of inspect (with and without --all-layers) against seconds per
    generated token of --method sample, on the same prompt, rounds interleaved."""
    from led_local.diagnostics.probe import Probe, analyse
    from led_local.diagnostics.sources import Item
    from led_local.llama.gguf_info import inspect_model

    info = inspect_model(model)
    cfg = DecodeConfig(method="sample", think_end="")
    led = LEDConfig()
    times: dict[str, list[float]] = {"decode step": [], "inspect": [], "inspect --all-layers": []}
    with Engine(info, cfg, n_ctx=1024, threads=threads) as engine:
        prompt = prompt_tokens(engine, PROMPT, raw=not info.chat_template)
        response = generate(engine, prompt, max_tokens=tokens, seed=0).tokens
    item = Item(prompt, response)
    probes = {name: Probe(info, led, all_layers=name.endswith("layers"), n_ctx=1024,
                          threads=threads) for name in list(times)[1:]}
    try:
        with Engine(info, cfg, n_ctx=1024, threads=threads) as engine:
            for r in range(rounds):
                res = generate(engine, prompt, max_tokens=tokens, seed=r)
                times["decode step"].append(res.decode_s / len(res.tokens))
                for name, probe in probes.items():
                    t0 = time.perf_counter()
                    analyse(probe, [item], led=led, think_end="")
                    times[name].append((time.perf_counter() - t0) / len(response))
    finally:
        for probe in probes.values():
            probe.close()
    base = statistics.median(times["decode step"])
    print(f"inspect benchmark: {Path(model).name}, {len(response)} positions x {rounds} rounds, "
          f"threads={threads or 'default'}")
    print(f"{'variant':22} {'ms/position':>12} {'x decode step':>14}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:22} {1000 * med:12.2f} {med / base:14.2f}")


def bench_ray(model: str, problems: str, *, n_problems: int, samples: int, max_tokens: int,
              threads: int | None) -> None:
    """Wall time and generated tokens/s of solve --ray (2 local workers) vs one process."""
    import tempfile

    try:
        import ray
    except ImportError:
        print("ray benchmark skipped: Ray is not installed (pip install 'led-local[ray]')")
        return
    from led_local.eval.problems import REFERENCE_PROMPT, load_problems
    from led_local.eval.ray_solve import RayOptions, connect, solve_ray
    from led_local.eval.solve import SolveOptions, solve

    items = load_problems(problems)[:n_problems]
    cfg = DecodeConfig(method="led")
    opts = SolveOptions(samples=samples, parallel=16, max_tokens=max_tokens, threads=threads)
    t0 = time.perf_counter()
    connect(RayOptions())
    init_s = time.perf_counter() - t0
    walls: dict[str, float] = {}
    tokens: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("one process", "--ray, 2 workers"):
                out = Path(tmp) / f"{len(walls)}.jsonl"
                t0 = time.perf_counter()
                if name == "one process":
                    p = solve(model, items, out, cfg, opts, template=REFERENCE_PROMPT)
                else:
                    p = solve_ray(model, items, out, cfg, opts, RayOptions(workers=2),
                                  template=REFERENCE_PROMPT)
                walls[name] = time.perf_counter() - t0
                tokens[name] = sum(json.loads(line)["n_tokens"] for line in out.open())
                print(f"  {name}: {p.done} samples, {tokens[name]} tokens, {walls[name]:.1f}s",
                      flush=True)
    finally:
        ray.shutdown()
    print(f"ray benchmark: {Path(model).name}, LED, {n_problems} problems x {samples} samples, "
          f"--max-tokens {max_tokens}; ray.init of a local instance: {init_s:.1f}s")
    print(f"{'variant':18} {'wall s':>7} {'tok/s':>7} {'x one':>6}")
    base = walls["one process"]
    for name, wall in walls.items():
        print(f"{name:18} {wall:7.1f} {tokens[name] / wall:7.1f} {base / wall:6.2f}")
def bench_methods(model: str, *, tokens: int, rounds: int, threads: int | None) -> None:
    """Decode tokens/s of hapo and swir against plain sampling, and swir's latent share."""
    from led_local.decoding.hapo import HAPOConfig, compute_stats
    from led_local.decoding.swir import SwirConfig
    from led_local.llama.embeddings import input_embeddings
    from led_local.llama.gguf_info import inspect_model

    info = inspect_model(model)
    t0 = time.perf_counter()
    emb = input_embeddings(info)
    load_s = time.perf_counter() - t0
    # statistics from a plain (statistics-free) HAPO run of the same prompt
    with Engine(info, DecodeConfig(method="hapo", temperature=0.6), n_ctx=1024,
                threads=threads) as e:
        for seq in generate_step(e, prompt_tokens(e, PROMPT), max_tokens=tokens,  # noqa: B007
                                 seed=99):
            pass
    stats = compute_stats(seq.trace.entropies)
    variants = {
        "sample": DecodeConfig(method="sample", think_end=""),
        "hapo": DecodeConfig(method="hapo", temperature=0.6, hapo=HAPOConfig(stats=stats)),
        "swir (window 512)": DecodeConfig(method="swir", think_end=""),
        "swir (window 8)": DecodeConfig(method="swir", think_end="", swir=SwirConfig(window=8)),
        "swir (w 8, mass .9)": DecodeConfig(method="swir", think_end="",
                                           swir=SwirConfig(window=8, top_mass=0.9)),
    }
    engines = {n: Engine(info, c, n_ctx=1024, threads=threads) for n, c in variants.items()}
    rates: dict[str, list[float]] = {n: [] for n in variants}
    latent: dict[str, list[float]] = {n: [] for n in variants}
    try:
        for r in range(rounds):
            for name, engine in engines.items():
                res = generate(engine, prompt_tokens(engine, PROMPT), max_tokens=tokens, seed=r)
                rates[name].append(len(res.tokens) / res.decode_s)
                sw = res.diagnostics.get("swir")
                latent[name].append(sw["latent_steps"] / max(1, len(res.tokens)) if sw else 0.0)
    finally:
        for engine in engines.values():
            engine.close()
    base = statistics.median(rates["sample"])
    print(f"methods benchmark: {Path(model).name}, {tokens} tokens x {rounds} rounds, "
          f"threads={threads or 'default'}")
    print(f"{'variant':20} {'tokens/s':>9} {'x sample':>9} {'latent/token':>13}")
    for name, rs in rates.items():
        med = statistics.median(rs)
        print(f"{name:20} {med:9.1f} {med / base:9.2f} {statistics.mean(latent[name]):13.2f}")
    print(f"swir embedding matrix: {emb.shape[0]} x {emb.shape[1]} float32 = "
          f"{emb.nbytes / 1e6:.0f} MB, read and dequantized in {load_s:.2f}s")
    for extra in (["-m", "sample"], ["-m", "swir"], ["-m", "swir", "--swir-top-mass", "0.9"]):
        mb = peak_rss_mb(["generate", model, "-p", "What is 2+3?", "-n", "16", *extra])
        print(f"peak memory of `generate {' '.join(extra)}`: {mb:.0f} MB")


def peak_rss_mb(args: list[str]) -> float:
    """Peak resident memory (MB) of one ``led-local`` command run in a child process."""
    import subprocess

    code = "import sys; from led_local.cli import main; main(sys.argv[1:])"
    # a fresh grandchild per measurement: RUSAGE_CHILDREN keeps the largest child seen so far
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-c", code, *args],
                         check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return int(out.stdout.split()[-1]) / 1024


def bench_swir_batch(model: str, *, rounds: int, threads: int | None, batch: int = 16) -> None:
    """Milliseconds per decode step of ``batch`` sequences with L latent: one embedding batch
    against two calls (tokens, then vectors)."""
    import numpy as np

    from led_local.llama.embeddings import input_embeddings
    from led_local.llama.gguf_info import inspect_model
    from led_local.llama.runtime import Runtime

    info = inspect_model(model)
    emb = input_embeddings(info)
    rng = np.random.default_rng(0)
    latents = [1, batch // 4, batch // 2, batch - 1]
    steps = max(4, rounds * 4)  # timed steps per (L, variant)
    n_ctx_seq = 64 + 2 * steps * len(latents) + 8
    with Runtime(info.path, n_ctx=n_ctx_seq * batch, n_seq=batch, n_threads=threads, info=info,
                 batch_invariant=True) as rt:
        prompt = rt.tokenize(PROMPT)[:64]
        for s in range(batch):
            rt.decode(prompt, range(len(prompt)), [s] * len(prompt),
                      [False] * (len(prompt) - 1) + [True])
        pos = len(prompt)
        seqs = list(range(batch))
        times: dict[tuple[int, str], list[float]] = {}
        for n_latent in latents:
            for k in range(2 * steps):
                tokens = rng.integers(0, emb.shape[0], batch)
                latent = set(rng.choice(batch, n_latent, replace=False).tolist())
                # a soft token stands in as some row: its content does not change the cost
                vecs = {i: emb[rng.integers(0, emb.shape[0])] for i in latent}
                variant = ("one call", "two calls")[(k + n_latent) % 2]
                t0 = time.perf_counter()
                if variant == "one call":
                    rows = np.stack([vecs[i] if i in latent else emb[tokens[i]] for i in seqs])
                    rt.decode_embd(rows, [pos] * batch, seqs, [True] * batch)
                else:
                    tok = [i for i in seqs if i not in latent]
                    lat = [i for i in seqs if i in latent]
                    rt.decode([int(tokens[i]) for i in tok], [pos] * len(tok), tok,
                              [True] * len(tok))
                    rt.decode_embd(np.stack([vecs[i] for i in lat]), [pos] * len(lat), lat,
                                   [True] * len(lat))
                times.setdefault((n_latent, variant), []).append(time.perf_counter() - t0)
                pos += 1
    print(f"swir batch benchmark: {Path(model).name}, {batch} sequences per step, {steps} steps "
          f"per variant, threads={threads or 'default'}")
    print(f"{'latent':>6} {'one call ms':>12} {'two calls ms':>13} {'two / one':>10}")
    for n_latent in latents:
        one = statistics.median(times[(n_latent, "one call")]) * 1e3
        two = statistics.median(times[(n_latent, "two calls")]) * 1e3
        print(f"{n_latent:6d} {one:12.1f} {two:13.1f} {two / one:10.2f}")


def bench_slots(model: str, *, rounds: int, threads: int | None) -> None:
    """Decode-step time per slot set, and 8 prompts' evaluation alone or together."""
    from led_local.eval.problems import load_problems

    sets = {"8 in slots 0-7": list(range(8)), "7 in slots 0-2, 4-7": [0, 1, 2, 4, 5, 6, 7],
            "7 in slots 0-6": list(range(7)), "4 in slots 0, 2, 4, 6": [0, 2, 4, 6],
            "4 in slots 0-3": [0, 1, 2, 3]}
    steps: dict[str, list[float]] = {k: [] for k in sets}
    fills: dict[str, list[float]] = {"one by one": [], "together": []}
    with Engine(model, DecodeConfig(method="sample"), n_ctx=8 * 1024, n_seq=8,
                threads=threads, batch_invariant=True) as e:
        prompts = [e.rt.tokenize(e.rt.apply_chat_template([{"role": "user", "content": q}]))
                   for q in [p.question for p in load_problems("gsm8k")[:8]]]
        n_prompt = sum(len(p) - 1 for p in prompts)
        for r in range(rounds):
            for name in (fills if r % 2 == 0 else reversed(fills)):
                for s in range(8):
                    e.free(s)
                t0 = time.perf_counter()
                started = [e.begin_fill(s, p[:-1]) for s, p in enumerate(prompts)]
                if name == "together":
                    while not all(f.finished for f in started):
                        e.advance_fills(started)
                else:
                    for f in started:
                        while not f.advance():
                            pass
                fills[name].append(time.perf_counter() - t0)
            pos = {s: len(p) - 1 for s, p in enumerate(prompts)}
            for name, slots in sets.items():
                t0 = time.perf_counter()
                for _ in range(10):
                    e.rt.decode([prompts[s][-1] for s in slots], [pos[s] for s in slots], slots,
                                [True] * len(slots))
                    for s in slots:
                        pos[s] += 1
                steps[name].append((time.perf_counter() - t0) / 10)
    m = statistics.median
    print(f"slots benchmark: {Path(model).name}, batch-invariant context, {rounds} rounds, "
          "median (min-max)")
    print(f"{'decode step':24} {'ms':>20}")
    for name, xs in steps.items():
        print(f"{name:24} {m(xs) * 1e3:8.1f} ({min(xs) * 1e3:.1f}-{max(xs) * 1e3:.1f})")
    print(f"{n_prompt} prompt tokens of 8 prompts {'s':>8}")
    for name, xs in fills.items():
        print(f"{name:24} {m(xs):8.2f} ({min(xs):.2f}-{max(xs):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--what", choices=["decode", "batch", "bufts", "embed", "serve", "fair",
                                       "inspect", "ray", "methods", "swir-batch", "slots", "all"],
                    default="all")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--fair-src", default=None,
                    help="fair: also measure the server of this source tree (a checkout from "
                    "before chunked prefill), with its default prefill")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--problems", default="gsm8k", help="problem file or bundled set name")
    ap.add_argument("--n-problems", type=int, default=4)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=192)
    args = ap.parse_args()
    if args.what in ("decode", "all"):
        bench_decode(args.model, tokens=args.tokens, rounds=args.rounds, threads=args.threads)
    if args.what in ("bufts", "all"):
        bench_bufts(args.model, tokens=args.tokens, rounds=args.rounds, threads=args.threads)
    if args.what in ("batch", "all"):
        bench_batch(args.model, args.problems, n_problems=args.n_problems, samples=args.samples,
                    max_tokens=args.max_tokens, threads=args.threads)
    if args.what in ("embed", "all"):
        bench_embed(args.model, args.problems, n_problems=args.n_problems, samples=args.samples,
                    max_tokens=args.max_tokens, threads=args.threads, rounds=args.rounds)
    if args.what in ("serve", "all"):
        from serve_bench import bench_serve

        bench_serve(args.model, tokens=args.max_tokens, threads=args.threads)
    if args.what in ("fair", "all"):
        from serve_bench import bench_fairness

        if args.fair_src:
            bench_fairness(args.model, threads=args.threads, chunks=(None,),
                           src=Path(args.fair_src).resolve())
        bench_fairness(args.model, threads=args.threads)
    if args.what in ("inspect", "all"):
        bench_inspect(args.model, tokens=args.tokens, rounds=args.rounds, threads=args.threads)
    if args.what in ("ray", "all"):
        bench_ray(args.model, args.problems, n_problems=args.n_problems, samples=args.samples,
                  max_tokens=args.max_tokens, threads=args.threads)
    if args.what in ("methods", "all"):
        bench_methods(args.model, tokens=args.tokens, rounds=args.rounds, threads=args.threads)
    if args.what in ("swir-batch", "all"):
        bench_swir_batch(args.model, rounds=args.rounds, threads=args.threads)
    if args.what in ("slots", "all"):
        bench_slots(args.model, rounds=args.rounds, threads=args.threads)


if __name__ == "__main__":
    main()
