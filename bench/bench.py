"""led-local benchmarks (``make bench``): ratios measured side by side in one run.

decode: one prompt decoded with --method sample and with LED (gated, always-exploring, both
capture paths), rounds interleaved so machine noise hits every variant alike.
batch: generated tokens/s of ``solve`` with --parallel 16 versus --parallel 1 (see batch.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from led_local import native  # noqa: E402
from led_local.engine import Engine  # noqa: E402
from led_local.generate import generate, prompt_tokens  # noqa: E402
from led_local.methods import DecodeConfig  # noqa: E402
from led_local.samplers import LEDConfig  # noqa: E402

PROMPT = ("Please reason step by step, and put your final answer within \\boxed{}. "
          "A farmer has 17 sheep and buys 3 more pens of 12 sheep each. He then sells a third "
          "of all his sheep. How many sheep does he have left?")


def decode_variants() -> dict[str, tuple[DecodeConfig, str]]:
    led = DecodeConfig(method="led")
    always = DecodeConfig(method="led", led=LEDConfig(exploit=False))
    variants = {
        "sample": (DecodeConfig(method="sample"), "auto"),
        "led (callback)": (led, "callback"),
        "led no-exploit (callback)": (always, "callback"),
    }
    if native.layer_inp_patch_version() is not None:
        variants["led (layer-inp)"] = (led, "layer-inp")
        variants["led no-exploit (layer-inp)"] = (always, "layer-inp")
    return variants


def bench_decode(model: str, *, tokens: int, rounds: int, threads: int | None) -> None:
    variants = decode_variants()
    engines = {name: Engine(model, cfg, n_ctx=1024, threads=threads, capture=cap)
               for name, (cfg, cap) in variants.items()}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    explored: dict[str, int] = {}
    generated: dict[str, int] = {}
    try:
        for r in range(rounds):
            for name, engine in engines.items():
                toks = prompt_tokens(engine, PROMPT)
                res = generate(engine, toks, max_tokens=tokens, seed=r, think_end="")
                rates[name].append(len(res.tokens) / res.decode_s)
                explored[name] = explored.get(name, 0) + sum(d is not None for d in res.depths)
                generated[name] = generated.get(name, 0) + len(res.tokens)
    finally:
        for engine in engines.values():
            engine.close()
    base = statistics.median(rates["sample"])
    print(f"decode benchmark: {Path(model).name}, {tokens} tokens x {rounds} rounds, "
          f"threads={threads or 'default'}")
    print(f"{'variant':28} {'tokens/s':>9} {'x sample':>9} {'explored/token':>15}")
    for name, rs in rates.items():
        med = statistics.median(rs)
        frac = explored[name] / max(1, generated[name])
        print(f"{name:28} {med:9.1f} {med / base:9.2f} {frac:15.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--what", choices=["decode", "batch", "all"], default="all")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.what in ("decode", "all"):
        bench_decode(args.model, tokens=args.tokens, rounds=args.rounds, threads=args.threads)


if __name__ == "__main__":
    main()
