"""The engine's batch-invariant decode with flash attention (patch 0003) against without it, on
one thread, in CPU time (what load on a shared machine distorts least): plain sampling, 8
sequences of GSM8K prompts, and 1 sequence after a ~4,000-token prompt; the prompt's
evaluation time too. Rounds alternate the two.

    .venv/bin/python bench/attention_bench.py models/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from led_local.decoding.engine import Engine  # noqa: E402
from led_local.decoding.methods import DecodeConfig  # noqa: E402
from led_local.eval.problems import load_problems  # noqa: E402
from led_local.llama import runtime  # noqa: E402


def run(model: str, flash: bool, n_seq: int, prompt_len: int, steps: int) -> tuple[float, float]:
    """(CPU s of the last prompt's evaluation, CPU s per decode step)."""
    runtime.invariant_flash_attention = lambda: flash
    questions = [p.question for p in load_problems("gsm8k")]
    long = " ".join(questions[:80])
    eng = Engine(model, DecodeConfig(method="sample"), n_ctx=n_seq * (prompt_len + steps + 300),
                 n_seq=n_seq, threads=1, batch_invariant=True)
    with eng:
        seqs = []
        for i in range(n_seq):
            text = long if prompt_len > 500 else questions[i]
            chat = eng.rt.apply_chat_template([{"role": "user", "content": text}])
            toks = eng.rt.tokenize(chat)[:prompt_len]
            t0 = time.process_time()
            eng.prefill(i, toks)
            prompt_s = time.process_time() - t0
            s = eng.new_sequence(i, seed=(1, i), max_tokens=10**6, prompt=toks)
            eng.start(s, len(toks))
            seqs.append(s)
        t0 = time.process_time()
        for _ in range(steps):
            for s in seqs:
                s.finish_reason = None  # keep every sequence decoding
            eng.step(seqs)
        return prompt_s, (time.process_time() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not runtime.invariant_flash_attention():
        raise SystemExit("this build lacks patches/0003 (or offloads to a GPU): make install")
    print("batch-invariant decode, 1 thread, CPU time, best of rounds")
    for name, n_seq, prompt_len, steps in [("8 sequences, GSM8K prompts", 8, 200, 60),
                                           ("1 sequence, 4,000-token prompt", 1, 4000, 60)]:
        res: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for flash in (True, False):
                res[flash].append(run(args.model, flash, n_seq, prompt_len, steps))
        step = {f: min(r[1] for r in res[f]) for f in res}
        prompt = {f: min(r[0] for r in res[f]) for f in res}
        print(f"  {name}: step {step[True] * 1e3:.1f} ms with flash attention, "
              f"{step[False] * 1e3:.1f} ms without ({step[False] / step[True]:.2f}x); "
              f"last prompt {prompt[True]:.2f} s and {prompt[False]:.2f} s", flush=True)


if __name__ == "__main__":
    main()
