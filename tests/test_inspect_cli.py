"""``led-local inspect``'s input modes, outputs and bad inputs, on tiny generated models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tinymodel import write_tiny_llama

from led_local.cli import main
from led_local.eval.problems import REFERENCE_PROMPT, load_problems, render
from led_local.llama.runtime import Runtime

PROBLEMS = Path(__file__).resolve().parent / "data" / "gsm8k-3.jsonl"
STEP_KEYS = {"token", "entropy_final", "gate", "in_scope", "tv_temperature", "ln0", "ln1"}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 9-block tiny llama: LED's default 8 depths fit."""
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", n_layer=9, seed=2).path


@pytest.fixture(scope="module")
def run_file(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("r") / "run.jsonl"
    r = run("solve", tiny, PROBLEMS, "-o", out, "-n", "2", "--max-tokens", "6", "--limit", "2",
            "-m", "greedy")
    assert r.exit_code == 0, r.output
    return out


def test_run_mode_rebuilds_the_prompts_solve_used(tiny, run_file):
    r = run("inspect", tiny, "--run", run_file, "--problems", PROBLEMS, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    records = [json.loads(line) for line in run_file.read_text().splitlines()]
    assert [(x["problem_id"], x["sample"]) for x in out["responses"]] == \
        [(x["problem_id"], x["sample"]) for x in records]
    problems = {p.id: p for p in load_problems(PROBLEMS)}
    with Runtime(tiny, vocab_only=True) as rt:
        for resp, rec in zip(out["responses"], records):
            prompt = rt.tokenize(rt.apply_chat_template(
                [{"role": "user",
                  "content": render(REFERENCE_PROMPT, problems[rec["problem_id"]])}]))
            assert resp["prompt_tokens"] == len(prompt)
            text = b"".join(rt.token_bytes(t) for t in resp["tokens"]).decode()
            # llama.cpp's SentencePiece tokenizer prefixes a space to a text's first piece
            assert text.removeprefix(" ") == rec["text"]
            assert len(resp["steps"]) == len(resp["tokens"])
            assert all(set(s) == STEP_KEYS for s in resp["steps"])
    one = run("inspect", tiny, "--run", run_file, "--problems", PROBLEMS, "--json",
              "--problem", records[0]["problem_id"], "--sample", "1")
    assert [(x["problem_id"], x["sample"]) for x in json.loads(one.stdout)["responses"]] == \
        [(records[0]["problem_id"], 1)]


def test_problems_mode_generates_and_plots(tiny, tmp_path):
    png = tmp_path / "f.png"
    r = run("inspect", tiny, "--problems", PROBLEMS, "--limit", "2", "-n", "5", "-s", "3",
            "--all-layers", "--plot", png, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [x["problem_id"] for x in out["responses"]] == \
        [p.id for p in load_problems(PROBLEMS)[:2]]
    assert out["params"]["generation"]["method"] == "led"
    assert out["params"]["generation"]["seed"] == 3
    steps = out["responses"][0]["steps"]
    assert set(steps[0]) == STEP_KEYS | {"layers"}
    assert len(steps[0]["layers"]["ln0"]) == len(steps[0]["layers"]["ln1"]) == 9
    assert len(steps[0]["ln0"]["depth_entropy"]) == 7
    assert len(steps[0]["ln1"]["posterior_entropy"]) == 8
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plot written" in r.stderr


def test_prompt_mode_prints_a_summary_and_a_verdict(tiny):
    r = run("inspect", tiny, "-p", "hello", "-n", "6", "-m", "sample", "--led-depths", "4",
            "-s", "1")
    assert r.exit_code == 0, r.output
    assert "inside LED's scope" in r.stdout and "LED" in r.stdout.splitlines()[-1]
    assert "position" in r.stderr  # progress on stderr


def test_the_same_seed_generates_the_same_analysis(tiny):
    a = run("inspect", tiny, "-p", "hello", "-n", "6", "-s", "4", "--json")
    b = run("inspect", tiny, "-p", "hello", "-n", "6", "-s", "4", "--json")
    assert a.exit_code == 0 and a.stdout == b.stdout


@pytest.mark.parametrize("args, message", [
    ([], "give one of --prompt"),
    (["--response", "x"], "give one of --prompt"),
    (["-p", "hi", "--problem", "1"], "--problem does not apply to --prompt"),
    (["-p", "hi", "--response", "the", "-m", "greedy"], "--method applies when inspect generates"),
    (["-p", "hi", "--response", "the", "-n", "4"], "--max-tokens applies when inspect generates"),
    (["-p", "hi", "--all-layers", "--capture", "layer-inp"], "--all-layers needs"),
    (["--problems", "gsm8k", "--limit", "0"], "--limit must be >= 1, got 0"),
    (["-p", "hi", "--raw", "--system", "s"], "--system needs the chat template"),
    (["-p", "hi", "--response", ""], "--response is empty"),
    (["-p", "hi", "--led-depths", "9"], "--led-depths must be between 2 and 8"),
    (["-p", "hi", "--response", "the sum is " * 200, "--ctx", "64"], "do not fit in the context"),
])
def test_bad_inputs_are_one_line_and_exit_2(tiny, args, message):
    r = run("inspect", tiny, *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_runs_are_refused(tiny, run_file, tmp_path):
    other = write_tiny_llama(tmp_path / "other.gguf", n_layer=9, seed=3).path
    cases = [
        ((other, "--run", run_file, "--problems", PROBLEMS), "was made with another model"),
        ((tiny, "--run", run_file, "--problems", PROBLEMS, "--problem", "nope"),
         "--problem: unknown problem id 'nope'"),
        ((tiny, "--run", run_file, "--problems", PROBLEMS, "--sample", "7"), "--sample 7"),
        ((tiny, "--run", tmp_path / "missing.jsonl"), "run file not found"),
    ]
    template = tmp_path / "t.txt"
    template.write_text("Q: {question}")
    cases.append(((tiny, "--run", run_file, "--problems", PROBLEMS, "--prompt-template",
                   template), "another prompt template"))
    lines = PROBLEMS.read_text().splitlines()
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(lines[2] + "\n")
    cases.append(((tiny, "--run", run_file, "--problems", wrong), "is not in the problem file"))
    for args, message in cases:
        r = run("inspect", *args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
