"""Helpers shared by the tests of split runs: a small problem set, solve through the CLI,
records compared apart from timing."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from led_local.cli import main
from led_local.eval.problems import load_problems

# three GSM8K problems and one without a gold answer: shards 0, 1, 2 and 2 of 3
IDS = ("gsm8k-0000", "gsm8k-0004", "gsm8k-0006")
SOLVE_ARGS = ("-n", "2", "--max-tokens", "16")


def write_problems(path: Path) -> Path:
    by_id = {p.id: p for p in load_problems("gsm8k")}
    lines = [json.dumps({"id": i, "question": by_id[i].question, "answer": by_id[i].answer})
             for i in IDS]
    lines.append(json.dumps({"id": "free", "question": "Name a prime number."}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def solve(model, problems, out, *extra, solve_args=SOLVE_ARGS):
    r = run("solve", model, problems, "-o", out, *solve_args, *extra)
    assert r.exit_code == 0, r.output
    return records(out)


def records(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def strip(recs: list[dict]) -> list[dict]:
    """Records without timing, in (problem, sample) order."""
    return sorted(({k: v for k, v in r.items() if k != "time_s"} for r in recs),
                  key=lambda r: (r["problem_id"], r["sample"]))


def keys(recs: list[dict]) -> list[tuple[str, int]]:
    return [(r["problem_id"], r["sample"]) for r in recs]
