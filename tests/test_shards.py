"""solve --shard I/N and led-local merge: stable shards, a split run merged equals one run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import evalruns
import pytest

from led_local.errors import LedError
from led_local.eval.merge import merge
from led_local.eval.problems import Problem
from led_local.eval.runfile import FINGERPRINT_KEYS, RunLock
from led_local.eval.shards import parse_shard, select, shard_of


def test_shards_are_stable_under_adding_and_reordering_problems():
    base = [Problem(f"p{i}", "q", None) for i in range(200)]
    grown = base + [Problem(f"new{i}", "q", None) for i in range(100)]
    random.Random(0).shuffle(grown)
    for n in (1, 3, 7):
        for i in range(n):
            before = {p.id for p in select(base, i, n)}
            after = {p.id for p in select(grown, i, n)}
            assert before == after & {p.id for p in base}
    sizes = [len(select(base, i, 4)) for i in range(4)]
    assert sum(sizes) == 200 and min(sizes) >= 35
    # pinned: the first 8 bytes of SHA-256 of the id, big-endian, modulo N
    assert [shard_of(f"gsm8k-{i:04d}", 3) for i in range(10)] == [0, 0, 0, 0, 1, 1, 2, 2, 1, 1]
    assert shard_of("free", 3) == 2


@pytest.mark.parametrize("text, message", [
    ("3", "^shard must be I/N"), ("a/b", "^shard must be I/N"),
    ("3/3", "needs 0 <= I < N"), ("0/0", "needs N >= 1"),
])
def test_bad_shard_specs(text, message):
    with pytest.raises(LedError, match=message):
        parse_shard(text)


@pytest.fixture(scope="module")
def split_run(smollm2, split_problems, single_run, tmp_path_factory):
    """The same LED run once whole and once as three shards."""
    tmp = tmp_path_factory.mktemp("shards")
    parts = [tmp / f"shard{i}.jsonl" for i in range(3)]
    for i, part in enumerate(parts):
        evalruns.solve(smollm2, split_problems, part, "--shard", f"{i}/3")
    return split_problems, single_run, parts


def test_shard_and_merge_equals_a_single_run(smollm2, split_run, tmp_path):
    problems, single, parts = split_run
    per_shard = [{r["problem_id"] for r in evalruns.records(p)} for p in parts]
    assert per_shard == [{"gsm8k-0000"}, {"gsm8k-0004"}, {"gsm8k-0006", "free"}]
    out = tmp_path / "merged.jsonl"
    r = evalruns.run("merge", out, *parts, "--expect", problems, "-n", "2")
    assert r.exit_code == 0, r.output
    assert "merged 3 files" in r.stderr and "8 records of 4 problems" in r.stderr
    merged = evalruns.records(out)
    assert evalruns.strip(merged) == evalruns.strip(single)
    # the problem file's order, each problem's samples in order (a run writes its records
    # as they finish, an order that the tokens, and so the CPU's arithmetic, decide)
    order = [json.loads(line)["id"] for line in problems.read_text().splitlines()]
    assert evalruns.keys(merged) == [(pid, s) for pid in order for s in (0, 1)]
    # the merged file is an ordinary run: solve resumes it (nothing left) and passk reads it
    again = evalruns.solve(smollm2, problems, out)
    assert again == merged
    assert evalruns.run("passk", out, "--json").exit_code == 0



def test_merge_reports_missing_samples_and_exits_1(split_run, tmp_path):
    problems, single, parts = split_run
    out = tmp_path / "partial.jsonl"
    r = evalruns.run("merge", out, parts[0], parts[2], "--expect", problems)
    assert r.exit_code == 1
    assert "missing: problem 'gsm8k-0004' samples 0,1" in r.stderr
    assert "2 samples of 1 problems missing" in r.stderr
    assert len(evalruns.records(out)) == 6  # what is there is still merged


def test_an_empty_shard_leaves_an_empty_run_file(smollm2, split_run, tmp_path):
    problems = split_run[0]
    out = tmp_path / "empty.jsonl"
    r = evalruns.run("solve", smollm2, problems, "-o", out, *evalruns.SOLVE_ARGS, "--limit", "1",
                     "--shard", "2/3")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == b""


def _rec(pid: str, sample: int, **over) -> dict:
    rec = {"problem_id": pid, "sample": sample, **dict.fromkeys(FINGERPRINT_KEYS, "x"),
           "seed": 0, "text": f"{pid}/{sample}", "answer": "1", "correct": True, "time_s": 1.0}
    rec.update(over)
    return rec


def _write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_merge_drops_agreeing_duplicates_and_refuses_disagreeing_ones(tmp_path):
    a = _write(tmp_path / "a.jsonl", [_rec("p", 0), _rec("p", 1)])
    b = _write(tmp_path / "b.jsonl", [_rec("p", 1, time_s=9.0), _rec("q", 0)])
    res = merge(tmp_path / "out.jsonl", [a, b])
    assert (res.records, res.duplicates, res.problems) == (3, 1, 2)
    assert evalruns.keys(evalruns.records(tmp_path / "out.jsonl")) == [("p", 0), ("p", 1),
                                                                      ("q", 0)]
    c = _write(tmp_path / "c.jsonl", [_rec("p", 1, text="other")])
    with pytest.raises(LedError, match="problem 'p' sample 1 differs between .*a.jsonl, record 2"
                                       " and .*c.jsonl, record 1"):
        merge(tmp_path / "out2.jsonl", [a, c])
    assert not (tmp_path / "out2.jsonl").exists()


@pytest.mark.parametrize("change, message", [
    ({"seed": 1}, "seed 1 is not the run seed 0"),
    ({"method": "sample"}, "a different method"),
    ({"model_sha256": "0" * 64}, "a different model_sha256"),
    ({"build": "other"}, "a different build"),
])
def test_merge_refuses_another_runs_records(tmp_path, change, message):
    a = _write(tmp_path / "a.jsonl", [_rec("p", 0)])
    b = _write(tmp_path / "b.jsonl", [_rec("q", 0), _rec("q", 1, **change)])
    r = evalruns.run("merge", tmp_path / "out.jsonl", a, b)
    assert r.exit_code == 2 and message in r.stderr and "b.jsonl, record 2" in r.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_merge_never_overwrites_a_file_that_is_not_an_input(tmp_path):
    a = _write(tmp_path / "a.jsonl", [_rec("p", 0)])
    b = _write(tmp_path / "b.jsonl", [_rec("p", 1)])
    other = tmp_path / "other.jsonl"
    other.write_text("keep me\n")
    r = evalruns.run("merge", other, a, b)
    assert r.exit_code == 2 and "is not one of the inputs" in r.stderr
    assert other.read_text() == "keep me\n"
    r = evalruns.run("merge", a, a, b)  # merging into one of the inputs is fine
    assert r.exit_code == 0 and evalruns.keys(evalruns.records(a)) == [("p", 0), ("p", 1)]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_merge_holds_the_locks_of_its_output_and_inputs(tmp_path):
    a = _write(tmp_path / "a.jsonl", [_rec("p", 0)])
    b = _write(tmp_path / "b.jsonl", [_rec("p", 1)])
    out = tmp_path / "out.jsonl"
    for held in (b, out):  # a shard still being written, or an output with another writer
        with RunLock(held):
            r = evalruns.run("merge", out, a, b)
        assert r.exit_code == 2 and f"{held} is being written by another" in r.stderr
        assert not out.exists()
    r = evalruns.run("merge", out, a, b)
    assert r.exit_code == 0 and evalruns.keys(evalruns.records(out)) == [("p", 0), ("p", 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "out.jsonl"]


def test_merge_never_writes_over_the_expected_problems(tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p", "question": "q?", "answer": "1"}) + "\n")
    r = evalruns.run("merge", problems, problems, "--expect", problems)
    assert r.exit_code == 2 and "is the expected problem file" in r.stderr
    assert json.loads(problems.read_text())["id"] == "p"
