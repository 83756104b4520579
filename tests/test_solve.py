"""solve / passk / compare end to end on SmolLM2 and GSM8K, plus their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from led_local.cli import main
from led_local.errors import LedError
from led_local.eval.problems import load_problems

ROOT = Path(__file__).resolve().parent.parent
GSM8K = Path(__file__).resolve().parent / "data" / "gsm8k-3.jsonl"  # GSM8K test, MIT licence


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    """Three GSM8K problems plus one without a gold answer (extra fields kept)."""
    path = tmp_path_factory.mktemp("p") / "p.jsonl"
    lines = GSM8K.read_text().splitlines()[:3]
    lines.append(json.dumps({"id": "free", "question": "Name a prime number.", "topic": "x"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def solve(model, problems, out, *extra):
    r = run("solve", model, problems, "-o", out, "-n", "2", "--max-tokens", "40", *extra)
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in Path(out).read_text().splitlines()]


def _strip(records):
    return sorted(({k: v for k, v in r.items() if k != "time_s"} for r in records),
                  key=lambda r: (r["problem_id"], r["sample"]))


@pytest.mark.parametrize("method", [["-m", "greedy"], ["-m", "sample"], ["-m", "led"],
                                    ["-m", "led", "--no-exploit", "-t", "1.0"]])
def test_parallel_1_and_16_give_identical_records(smollm2, problems, tmp_path, method):
    a = solve(smollm2, problems, tmp_path / "a.jsonl", "--parallel", "1", *method)
    b = solve(smollm2, problems, tmp_path / "b.jsonl", "--parallel", "16", *method)
    assert len(a) == 8
    assert _strip(a) == _strip(b)


def test_parallel_1_and_6_give_identical_records_at_a_long_context(smollm2, tmp_path):
    """A prompt of ~3,000 tokens: each decode step attends over a dozen chunks of the KV, split
    across threads for a lone sequence and not among six (flash attention, patch 0003); the
    mean final-norm states (--embed) compare every step's output bit for bit."""
    lines = GSM8K.read_text().splitlines()
    words = " ".join(json.loads(line)["question"] for line in lines) + " "
    question = (words * 40)[:11500] + "\nWhat is 2 + 3?"
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "long", "question": question, "answer": "5"}) + "\n")
    runs = []
    for parallel in ("1", "6"):
        out = tmp_path / f"p{parallel}.jsonl"
        r = run("solve", smollm2, path, "-o", out, "-n", "6", "--max-tokens", "12", "-m",
                "sample", "--parallel", parallel, "--embed", "--logprobs")
        assert r.exit_code == 0, r.output
        runs.append([json.loads(line) for line in out.read_text().splitlines()])
    assert len(runs[0]) == 6 and all(rec["n_tokens"] > 0 for rec in runs[0])
    assert _strip(runs[0]) == _strip(runs[1])


def test_records_have_every_field(smollm2, problems, tmp_path):
    recs = solve(smollm2, problems, tmp_path / "r.jsonl", "--logprobs")
    for r in recs:
        for key in ("problem_id", "sample", "method", "params", "seed", "text", "answer",
                    "correct", "n_tokens", "finish_reason", "time_s", "led", "logprobs"):
            assert key in r
        assert len(r["logprobs"]) == r["n_tokens"] == len(r["led"]["depths"])
    free = [r for r in recs if r["problem_id"] == "free"]
    assert free and all(r["correct"] is None for r in free)
    assert all(r["extra"] == {"topic": "x"} for r in free)
    assert all(isinstance(r["correct"], bool) for r in recs if r["problem_id"] != "free")


def test_rerun_resumes_and_repairs_a_torn_line(smollm2, problems, tmp_path):
    out = tmp_path / "run.jsonl"
    first = solve(smollm2, problems, out)
    data = out.read_bytes()
    lines = data.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:-2]) + lines[-2][:25])  # lose one record, tear another
    second = solve(smollm2, problems, out)
    assert _strip(second) == _strip(first)
    third = solve(smollm2, problems, out)  # nothing left to do
    assert out.read_bytes() == b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n"
                                         for r in third)
    assert len(third) == len(first)


def test_interrupted_run_leaves_a_valid_file_and_resumes(smollm2, problems, tmp_path):
    from led_local.decoding.methods import DecodeConfig
    from led_local.eval.problems import REFERENCE_PROMPT
    from led_local.eval.solve import SolveOptions
    from led_local.eval.solve import solve as solve_api

    out = tmp_path / "stop.jsonl"
    items = load_problems(problems)
    opts = SolveOptions(samples=2, parallel=4, max_tokens=40)
    seen = []
    p = solve_api(smollm2, items, out, DecodeConfig(method="greedy"), opts,
                  template=REFERENCE_PROMPT, on_progress=lambda pr: seen.append(pr.done),
                  should_stop=lambda: bool(seen) and seen[-1] >= 2)
    assert 2 <= p.done < 8
    partial = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(partial) == p.done
    done = solve(smollm2, problems, out, "-m", "greedy", "--parallel", "4")
    assert len(done) == 8 and done[: len(partial)] == partial


def test_a_different_configuration_is_refused_then_forced(smollm2, problems, tmp_path):
    out = tmp_path / "run.jsonl"
    solve(smollm2, problems, out, "--limit", "1")
    before = out.read_bytes()
    r = run("solve", smollm2, problems, "-o", out, "-n", "2", "--max-tokens", "40",
            "--limit", "1", "-m", "sample")
    assert r.exit_code == 2 and "different method" in r.stderr
    assert out.read_bytes() == before
    r = run("solve", smollm2, problems, "-o", out, "-n", "2", "--max-tokens", "40",
            "--limit", "1", "-m", "sample", "--force")
    assert r.exit_code == 0, r.output
    backups = list(tmp_path.glob("run.jsonl.*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == before


def test_passk_and_compare(smollm2, problems, tmp_path):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    solve(smollm2, problems, a, "-m", "sample")
    solve(smollm2, problems, b)
    r = run("passk", a, "--k", "1,2", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n_problems"] == 3 and out["samples_per_problem"] == 2
    assert out["ungraded_problems"] == 1
    for key in ("mean_accuracy", "pass@1", "pass@2", "maj@n"):
        assert 0.0 <= out[key] <= 1.0
    assert out["pass@1"] == pytest.approx(out["mean_accuracy"])
    text = run("passk", a).stdout
    assert "pass@1" in text and "pass@2" in text
    plot = tmp_path / "k.png"
    r = run("compare", a, b, "--plot", plot)
    assert r.exit_code == 0, r.output
    assert "pass@1" in r.stdout and "B - A" in r.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run("passk", a, "--k", "4").exit_code == 2


def test_dola_solves_too(smollm2, problems, tmp_path):
    recs = solve(smollm2, problems, tmp_path / "d.jsonl", "-m", "dola", "--dola-layers", "low",
                 "--limit", "1")
    assert len(recs) == 2 and recs[0]["params"]["dola_layers"] == "low"


@pytest.mark.parametrize("content, message", [
    ("", "problem file is empty"),
    ('{"id": "a", "question": "q"}\n{"id": "a", "question": "r"}\n', "duplicate id 'a'"),
    ('{"id": "a", "question": "q"}\n{oops\n', ":2: malformed JSON"),
    ('{"id": "a"}\n', ":1: missing field 'question'"),
    ('[1, 2]\n', ":1: expected a JSON object"),
])
def test_bad_problem_files(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(LedError, match=message):
        load_problems(path)


def test_bad_solve_inputs_exit_2_and_never_touch_the_run(smollm2, problems, tmp_path):
    out = tmp_path / "keep.jsonl"
    out.write_text('{"problem_id": "x", "sample": 0}\n')
    before = out.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "q"}\n{broken\n')
    cases = [
        (["-n", "0"], "-n must be >= 1"),
        (["--parallel", "0"], "--parallel must be >= 1"),
        (["--prompt-template", tmp_path / "none.txt"], "prompt template not found"),
    ]
    for extra, message in cases:
        r = run("solve", smollm2, problems, "-o", out, *extra)
        assert r.exit_code == 2 and message in r.stderr, r.output
    r = run("solve", smollm2, bad, "-o", out)
    assert r.exit_code == 2 and "bad.jsonl:2: malformed JSON" in r.stderr
    r = run("solve", smollm2, problems, "-o", out)  # a record from another run
    assert r.exit_code == 2 and "was made with a different" in r.stderr
    r = run("solve", smollm2, problems, "-o", tmp_path / "missing-dir" / "r.jsonl")
    assert r.exit_code == 2 and "output directory does not exist" in r.stderr
    r = run("solve", smollm2, problems, "-o", tmp_path)
    assert r.exit_code == 2 and "output path is a directory" in r.stderr
    assert out.read_bytes() == before
