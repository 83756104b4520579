"""Issue 26 on a GPU build: does `solve` stay batch-invariant at a long context, with the
default attention (flash attention off on a GPU build) and with flash attention forced on
(CUDA's kernels, which patch 0003 does not cover: expected to differ)? Prints one line per
attention: identical or not, and the tokens/s of each run. Run by `bench/gpu_check.sh fa`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from led_local.llama import runtime  # noqa: E402

MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    from click.testing import CliRunner

    from led_local.cli import main as cli

    lines = Path("tests/data/gsm8k-3.jsonl").read_text().splitlines()
    words = " ".join(json.loads(line)["question"] for line in lines) + " "
    with tempfile.TemporaryDirectory() as tmp:
        problems = Path(tmp) / "long.jsonl"
        problems.write_text(json.dumps({"id": "long", "question": (words * 40)[:11500]
                                        + "\nWhat is 2 + 3?", "answer": "5"}) + "\n")
        for name, flash in (("default", None), ("flash forced on", True)):
            if flash is not None:
                runtime.invariant_flash_attention = lambda f=flash: f
            runs, rates = [], []
            for parallel in ("1", "6"):
                out = Path(tmp) / f"{name[:5]}-{parallel}.jsonl"
                t0 = time.perf_counter()
                r = CliRunner().invoke(cli, ["solve", MODEL, str(problems), "-o", str(out),
                                             "-n", "6", "--max-tokens", "64", "-m", "sample",
                                             "--parallel", parallel, "--embed", "--logprobs"])
                assert r.exit_code == 0, r.output
                recs = [json.loads(x) for x in out.read_text().splitlines()]
                rates.append(sum(x["n_tokens"] for x in recs) / (time.perf_counter() - t0))
                runs.append(sorted(({k: v for k, v in x.items() if k != "time_s"}
                                    for x in recs), key=lambda x: x["sample"]))
            same = runs[0] == runs[1]
            print(f"attention {name}: --parallel 1 and 6 records "
                  f"{'identical' if same else 'DIFFER'}; {rates[0]:.1f} and {rates[1]:.1f} "
                  "tokens/s (model load and prompt included)", flush=True)


if __name__ == "__main__":
    main()
