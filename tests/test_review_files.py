"""Nothing lost on disk: inspect's plot, run-file locks and merge's temporary file, merge on
hostile shards (issue 21, cases 1, 2, 3, 9, 10, 21 and the file items of 27)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from tinymodel import write_tiny_llama

from led_local.cli import main
from led_local.errors import LedError
from led_local.eval.merge import merge
from led_local.eval.runfile import FINGERPRINT_KEYS, RunFile, RunLock

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from led_local.cli import main; main()"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _rec(pid: str, sample: int, **over) -> dict:
    rec = {"problem_id": pid, "sample": sample, **dict.fromkeys(FINGERPRINT_KEYS, "x"),
           "seed": 0, "text": f"{pid}/{sample}", "answer": "1", "correct": True, "time_s": 1.0}
    rec.update(over)
    return rec


def _write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf").path


# -- case 1: inspect --plot never overwrites its inputs ------------------------------------------
def test_case1_inspect_plot_onto_an_input_is_refused(tiny, tmp_path):
    run_file = _write(tmp_path / "run.jsonl", [_rec("p", 0)])
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p", "question": "q?", "answer": "1"}) + "\n")
    model_bytes, run_bytes = tiny.read_bytes(), run_file.read_bytes()
    for args, what in (
            (["--run", run_file, "--problems", problems, "--plot", run_file], "the run file"),
            (["--prompt", "Hi", "--plot", tiny], "the model"),
            (["--problems", problems, "--plot", problems], "the problem file")):
        r = run("inspect", tiny, *args)
        assert r.exit_code == 2 and "--plot" in r.stderr and what in r.stderr, r.output
    assert tiny.read_bytes() == model_bytes and run_file.read_bytes() == run_bytes
    assert json.loads(problems.read_text())["id"] == "p"


# -- case 27: inspect --plot onto a directory fails before any analysis -------------------------
def test_case27_inspect_plot_onto_a_directory_fails_first(tmp_path):
    r = run("inspect", tmp_path / "absent.gguf", "--prompt", "Hi", "--plot", tmp_path)
    assert r.exit_code == 2 and "is a directory" in r.stderr, r.output
    r = run("inspect", tmp_path / "absent.gguf", "--prompt", "Hi", "--plot",
            tmp_path / "no" / "x.png")
    assert r.exit_code == 2 and "does not exist" in r.stderr and "no" in r.stderr


# -- case 2: the lock never follows a planted link ----------------------------------------------
def test_case2_a_lock_file_that_is_a_link_is_refused_and_untouched(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    out = tmp_path / "out.jsonl"
    lock = tmp_path / "out.jsonl.lock"
    shard = _write(tmp_path / "shard.jsonl", [_rec("p", 0)])
    for plant in (lambda: lock.symlink_to(precious), lambda: os.link(precious, lock)):
        plant()
        r = run("merge", out, shard)
        assert r.exit_code == 2 and "lock file" in r.stderr, r.output
        with pytest.raises(LedError, match="symbolic link|hard links"):
            RunFile(out, {})
        assert precious.read_text() == "keep me\n" and not out.exists()
        lock.unlink()
    os.mkfifo(lock)
    with pytest.raises(LedError, match="not a regular file"):
        RunLock(out).acquire()
    lock.unlink()
    assert run("merge", out, shard).exit_code == 0
    assert precious.read_text() == "keep me\n" and not lock.exists()


# -- case 3: merge's temporary file is unpredictable and never followed -------------------------
def test_case3_planted_temporary_links_are_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "out.jsonl"
    planted = tmp_path / f".out.jsonl.{os.getpid()}.tmp"  # the old, predictable name
    planted.symlink_to(victim)
    shard = _write(tmp_path / "shard.jsonl", [_rec("p", 0), _rec("p", 1)])
    merge(out, [shard])
    assert victim.read_text() == "keep me\n"
    assert not out.is_symlink() and out.read_text() == shard.read_text()
    assert planted.is_symlink()
    assert sorted(p.name for p in tmp_path.glob(".*")) == [planted.name]


# -- case 9: a lone surrogate in a shard merges without loss, nothing left behind ----------------
def test_case9_a_lone_surrogate_round_trips_and_leaves_no_temporary_file(tmp_path):
    shard = tmp_path / "shard.jsonl"
    shard.write_text(json.dumps(_rec("p", 0, text="a\ud800b")) + "\n"
                     + json.dumps(_rec("p", 1, text="é")) + "\n")
    out = tmp_path / "out.jsonl"
    r = run("merge", out, shard)
    assert r.exit_code == 0, r.output
    back = [json.loads(x) for x in out.read_text().splitlines()]
    assert [b["text"] for b in back] == ["a\ud800b", "é"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# -- case 10: huge sample counts are counted, never listed --------------------------------------
def test_case10_a_huge_sample_index_or_n_is_bounded(tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": i, "question": "q?", "answer": "1"}) + "\n"
                                for i in ("p", "q")))
    shard = _write(tmp_path / "shard.jsonl", [_rec("p", 0), _rec("p", 10**12)])
    limit = 1 << 31  # an address-space limit: the old code's list of every pair hits it

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    for extra in ([], ["-n", str(10**12)]):
        out = tmp_path / f"out{len(extra)}.jsonl"
        p = subprocess.run([*CLI, "merge", str(out), str(shard), "--expect", str(problems),
                            *extra], capture_output=True, text=True, env=ENV,
                           preexec_fn=cap, timeout=120)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        n = 10**12 + 1 if not extra else 10**12
        missing = (n - 2 if not extra else n - 1) + n
        assert f"{missing} samples of 2 problems missing" in p.stderr
        assert "more samples not listed" in p.stderr
        assert p.stderr.count("\n") < 1100
        assert "missing: problem 'p' samples 1,2,3" in p.stderr


def test_case10_missing_samples_are_listed_around_the_present_ones(tmp_path):
    problems = [type("P", (), {"id": i})() for i in ("p", "q")]
    shard = _write(tmp_path / "shard.jsonl", [_rec("p", 0), _rec("p", 2), _rec("q", 1)])
    res = merge(tmp_path / "out.jsonl", [shard], expect=problems, samples=4)
    assert res.missing == [("p", 1), ("p", 3), ("q", 0), ("q", 2), ("q", 3)]
    assert (res.n_missing, res.n_missing_problems) == (5, 2)


# -- case 21: shards in a read-only directory merge ---------------------------------------------
def _unprivileged() -> None:
    """Root ignores file permissions: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set, so that the program this child executes honours them."""
    if os.geteuid() == 0:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # PR_CAPBSET_DROP (24) of CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_case21_shards_in_a_read_only_directory_merge():
    base = Path(tempfile.mkdtemp(prefix="led-ro-"))
    try:
        base.chmod(0o755)
        shards, outdir = base / "shards", base / "out"
        shards.mkdir()
        outdir.mkdir()
        a = _write(shards / "a.jsonl", [_rec("p", 0)])
        b = _write(shards / "b.jsonl", [_rec("p", 1)])
        shards.chmod(0o555)
        outdir.chmod(0o777)
        out = outdir / "merged.jsonl"
        p = subprocess.run([*CLI, "merge", str(out), str(a), str(b)], capture_output=True,
                           text=True, env=ENV, preexec_fn=_unprivileged, timeout=120)
        assert p.returncode == 0, p.stderr
        assert [json.loads(x)["sample"] for x in out.read_text().splitlines()] == [0, 1]
        assert sorted(x.name for x in shards.iterdir()) == ["a.jsonl", "b.jsonl"]
        # a writer's lock that exists there is still honoured
        shards.chmod(0o755)
        with RunLock(b):
            shards.chmod(0o555)
            p = subprocess.run([*CLI, "merge", str(outdir / "m2.jsonl"), str(a), str(b)],
                               capture_output=True, text=True, env=ENV,
                               preexec_fn=_unprivileged, timeout=120)
            shards.chmod(0o755)
        assert p.returncode == 2 and "is being written by another" in p.stderr, p.stderr
    finally:
        for d in base.rglob("*"):
            if d.is_dir():
                d.chmod(0o755)
        shutil.rmtree(base)


# -- case 27: /dev/zero is not "not found"; a full disk exits 1 ---------------------------------
def test_case27_a_device_is_not_a_run_file_and_a_full_disk_exits_1(tmp_path):
    r = run("merge", tmp_path / "out.jsonl", "/dev/zero")
    assert r.exit_code == 2 and "not a regular file" in r.stderr, r.output
    shard = _write(tmp_path / "shard.jsonl", [_rec("p", i, text="x" * 1000) for i in range(20)])
    limit = shard.stat().st_size // 2

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "merged.jsonl"
    p = subprocess.run([*CLI, "merge", str(out), str(shard)], capture_output=True, text=True,
                       env=ENV, preexec_fn=cap, timeout=120)
    assert p.returncode == 1 and "cannot write" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()
    assert [x.name for x in tmp_path.iterdir() if x.name.endswith(".tmp")] == []
