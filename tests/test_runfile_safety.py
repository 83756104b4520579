"""Run files lose nothing and count nothing twice: ownership lock, foreign files, backups,
typed records, problem hashes, write failures, kill -9 and resume (issue 8, cases 1-7, 9, 13)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from tinymodel import write_tiny_llama

from led_local.cli import main
from led_local.errors import LedError
from led_local.eval import runfile
from led_local.eval.runfile import RunFile, RunLock, read_records

ROOT = Path(__file__).resolve().parent.parent
GSM8K = Path(__file__).resolve().parent / "data" / "gsm8k-3.jsonl"
FP = {"model": "m:1", "method": "greedy", "params": {}, "seed": 0, "max_tokens": 8,
      "prompt_template": "t", "logprobs": False}
CLI = [sys.executable, "-c", "from led_local.cli import main; main()"]
PROBLEMS = [{"id": "a", "question": "What is 2 + 3?", "answer": "5"},
            {"id": "b", "question": "What is 1 + 1?", "answer": "2"},
            {"id": "c", "question": "Say a word."}]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def rec(pid: str, sample: int, **over) -> dict:
    return {"problem_id": pid, "sample": sample, **FP, "answer": "5", "gold": "5",
            "correct": True, **over}


def write_run(path: Path, records: list[dict], *, newline_at_end: bool = True) -> Path:
    text = "\n".join(json.dumps(r) for r in records)
    path.write_text(text + ("\n" if newline_at_end else ""))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf").path


@pytest.fixture
def problems(tmp_path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def solve(model, problems, out, *extra):
    return run("solve", model, problems, "-o", out, "-n", "2", "--max-tokens", "6",
               "-m", "greedy", *extra)


def strip(records):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# -- case 1: a file that is not a run file is never taken for one -----------------------------
def test_a_foreign_output_is_refused_and_force_moves_it_aside(tiny, problems, tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"threads": 4}')  # json.dump: one line, no newline
    with pytest.raises(LedError, match="not a led-local run file"):
        RunFile(config, FP)
    r = solve(tiny, problems, config)
    assert r.exit_code == 2 and "not a led-local run file" in r.stderr
    assert config.read_text() == '{"threads": 4}'
    r = solve(tiny, problems, config, "--force")
    assert r.exit_code == 0, r.output
    backups = list(tmp_path.glob("config.json.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == '{"threads": 4}'
    assert f"moved to {backups[0]}" in r.stderr
    assert len(lines(config)) == 6


def test_a_torn_first_record_is_still_a_run(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rec("a", 0))[:30])  # killed during the very first write
    with RunFile(path, FP) as rf:
        rf.open_for_append()
        rf.append(rec("a", 0))
    assert lines(path) == [rec("a", 0)]


# -- case 2: backups never replace anything ----------------------------------------------------
def test_forced_restarts_in_one_second_keep_every_backup(tmp_path):
    path = tmp_path / "run.jsonl"
    contents = []
    for seed in (1, 2, 3):
        write_run(path, [rec("a", 0, seed=seed)])
        contents.append(path.read_text())
        with RunFile(path, FP, force=True) as rf:
            rf.open_for_append()
            assert rf.backup is not None
    backups = sorted(tmp_path.glob("run.jsonl.*.bak"))
    assert len(backups) == 3
    assert sorted(b.read_text() for b in backups) == sorted(contents)


# -- case 3: outputs never overwrite inputs -----------------------------------------------------
def test_plot_and_output_onto_inputs_are_refused(tiny, problems, tmp_path):
    a = write_run(tmp_path / "a.jsonl", [rec("a", 0)])
    b = write_run(tmp_path / "b.jsonl", [rec("a", 0, correct=False)])
    before = a.read_bytes()
    r = run("compare", a, b, "--plot", a)
    assert r.exit_code == 2 and "--plot" in r.stderr and "run A" in r.stderr
    assert a.read_bytes() == before
    r = solve(tiny, problems, problems, "--force")
    assert r.exit_code == 2 and "the problem file" in r.stderr
    assert len(problems.read_text().splitlines()) == 3


# -- case 4: one writer; duplicates are refused ------------------------------------------------
def test_a_second_writer_fails_at_once_naming_the_holder(tiny, problems, tmp_path):
    out = tmp_path / "run.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom led_local.eval.runfile import RunLock\n"
         f"RunLock({str(out)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        r = solve(tiny, problems, out)
        assert r.exit_code == 2 and f"pid {holder.pid}" in r.stderr, r.output
        assert time.monotonic() - t0 < 10 and not out.exists()
        with pytest.raises(runfile.RunLockedError):
            RunLock(out).acquire()
    finally:
        holder.kill()  # the lock dies with its process
        holder.wait()
    r = solve(tiny, problems, out)
    assert r.exit_code == 0, r.output
    assert not Path(str(out) + ".lock").exists()


def test_duplicated_records_are_refused_naming_the_lines(tmp_path):
    path = write_run(tmp_path / "r.jsonl", [rec("a", 0), rec("a", 1), rec("a", 0)])
    r = run("passk", path)
    assert r.exit_code == 2
    assert "r.jsonl:3: duplicate record for problem 'a' sample 0 (first on line 1)" in r.stderr


# -- case 5: record types ------------------------------------------------------------------------
@pytest.mark.parametrize("over, message", [
    ({"correct": "false"}, "'correct' must be true, false or null"),
    ({"correct": float("nan")}, "'correct' must be true, false or null, got NaN"),
    ({"correct": 2}, "'correct' must be true, false or null, got 2"),
    ({"answer": 18}, "'answer' must be a string or null"),
    ({"answer": ["1"]}, "'answer' must be a string or null"),
    ({"sample": "1"}, "'sample' must be a non-negative integer"),
    ({"sample": None}, "'sample' must be a non-negative integer"),
    ({"sample": -1}, "'sample' must be a non-negative integer"),
])
def test_record_types_are_checked_with_file_and_line(tmp_path, over, message):
    path = write_run(tmp_path / "r.jsonl", [rec("a", 0), {**rec("a", 1), **over}])
    r = run("passk", path)
    assert r.exit_code == 2 and "r.jsonl:2: " + message in r.stderr, r.output
    assert "Traceback" not in r.output
    with pytest.raises(LedError, match="r.jsonl:2: "):
        RunFile(path, FP)


def test_a_deeply_nested_record_line_is_one_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rec("a", 0)) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    r = run("passk", path)
    assert r.exit_code == 2 and "r.jsonl:2: not a JSON record" in r.stderr


# -- case 6: a complete last line without its newline ------------------------------------------
def test_a_last_record_without_newline_is_read_and_kept(tmp_path):
    path = write_run(tmp_path / "r.jsonl", [rec("a", 0), rec("a", 1, correct=False)],
                     newline_at_end=False)
    out = json.loads(run("passk", path, "--json").stdout)
    assert out["samples_per_problem"] == 2 and out["mean_accuracy"] == 0.5
    with RunFile(path, FP) as rf:
        assert rf.done == {("a", 0), ("a", 1)}
        rf.open_for_append()
        rf.append(rec("a", 2))
    assert [r["sample"] for r in lines(path)] == [0, 1, 2]


# -- case 7: a problem edited under the same id ------------------------------------------------
def test_resume_refuses_a_problem_changed_under_its_id(tiny, problems, tmp_path):
    out = tmp_path / "run.jsonl"
    assert solve(tiny, problems, out, "--limit", "2").exit_code == 0
    before = out.read_bytes()
    edited = [dict(PROBLEMS[0], answer="6"), *PROBLEMS[1:]]
    problems.write_text("".join(json.dumps(p) + "\n" for p in edited))
    r = solve(tiny, problems, out)
    assert r.exit_code == 2 and "problem 'a' changed" in r.stderr, r.output
    assert out.read_bytes() == before
    edited = [dict(PROBLEMS[0], question="What is 2 + 4?"), *PROBLEMS[1:]]
    problems.write_text("".join(json.dumps(p) + "\n" for p in edited))
    assert "problem 'a' changed" in solve(tiny, problems, out).stderr
    r = solve(tiny, problems, out, "--force")
    assert r.exit_code == 0 and len(lines(out)) == 6
    assert all(len(r["problem_hash"]) == 16 for r in lines(out))


# -- case 9: compare pairs only runs of the same problems --------------------------------------
def test_compare_refuses_runs_with_different_golds(tmp_path):
    a = write_run(tmp_path / "a.jsonl", [rec("a", 0), rec("b", 0)])
    b = write_run(tmp_path / "b.jsonl", [rec("a", 0, gold="6"), rec("b", 0)])
    r = run("compare", a, b)
    assert r.exit_code == 2 and "problem 'a' has gold '5'" in r.stderr, r.output


# -- case 13: write failures -------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failed_write_is_one_line_exit_1_and_resumable(tiny, problems, tmp_path,
                                                         monkeypatch, code):
    whole = tmp_path / "whole.jsonl"
    assert solve(tiny, problems, whole).exit_code == 0
    out = tmp_path / "run.jsonl"
    calls = []

    def failing_write(fd, data):
        calls.append(1)
        if len(calls) == 3:
            os.write(fd, bytes(data[:20]))  # a partial write, then the failure
            raise OSError(code, os.strerror(code))
        return os.write(fd, data)

    monkeypatch.setattr(runfile, "_write", failing_write)
    r = solve(tiny, problems, out)
    assert r.exit_code == 1, r.output
    assert r.stderr.count("\n") <= 2 and errno.errorcode[code] in r.stderr
    assert "resume" in r.stderr and "Traceback" not in r.output
    assert len(lines(out)) == 2  # intact, the torn third cut back off
    monkeypatch.undo()
    assert solve(tiny, problems, out).exit_code == 0
    assert strip(lines(out)) == strip(lines(whole))


def test_file_size_limit_mid_run_exits_1_and_resumes(tiny, problems, tmp_path):
    import resource

    whole = tmp_path / "whole.jsonl"
    assert solve(tiny, problems, whole).exit_code == 0
    limit = len(whole.read_bytes()) // 2
    out = tmp_path / "run.jsonl"
    cmd = [*CLI, "solve", str(tiny), str(problems), "-o",
           str(out), "-n", "2", "--max-tokens", "6", "-m", "greedy"]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                       "PYTHONPATH": str(ROOT)},
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                             (limit, limit)))
    assert p.returncode == 1, p.stderr
    assert "EFBIG" in p.stderr and "Traceback" not in p.stderr
    assert 0 < len(lines(out)) < 6
    assert solve(tiny, problems, out).exit_code == 0
    assert strip(lines(out)) == strip(lines(whole))


# -- kill -9 at random moments, then resume == an uninterrupted run ----------------------------
def test_kill_9_five_times_then_resume_equals_an_uninterrupted_run(smollm2, tmp_path):
    problems = tmp_path / "p.jsonl"  # no gold answers: no grading worker to wait for
    problems.write_text("".join(
        json.dumps({"id": json.loads(x)["id"], "question": json.loads(x)["question"]}) + "\n"
        for x in GSM8K.read_text().splitlines()[:3]))
    args = ["solve", str(smollm2), str(problems), "-n", "6", "--max-tokens", "48",
            "--parallel", "1", "-s", "7", "-m", "sample"]
    whole = tmp_path / "whole.jsonl"
    assert run(*args, "-o", whole).exit_code == 0
    out = tmp_path / "killed.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(8)
    kills = 0
    for _ in range(5):
        size = out.stat().st_size if out.exists() else 0
        proc = subprocess.Popen([*CLI, *args, "-o", str(out)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and \
                (not out.exists() or out.stat().st_size == size):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.1))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3
    assert run(*args, "-o", out).exit_code == 0
    got = read_records(out, tolerate_torn_tail=False)
    assert sorted(strip(got), key=lambda r: (r["problem_id"], r["sample"])) == \
        sorted(strip(lines(whole)), key=lambda r: (r["problem_id"], r["sample"]))
