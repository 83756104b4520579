"""solve --ray on a real local Ray instance (one per module): the records of a single run,
through a worker killed mid-shard and a driver killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import evalruns
import pytest
import ray
from tinymodel import write_tiny_llama

from led_local.decoding.methods import DecodeConfig
from led_local.errors import LedError
from led_local.eval.identity import build_id
from led_local.eval.problems import REFERENCE_PROMPT, load_problems
from led_local.eval.ray_solve import RayOptions, ShardsFailed, solve_ray
from led_local.eval.ray_worker import SolveWorker
from led_local.eval.solve import SolveOptions, solve

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance for the module; on teardown it is shut down and any of its
    processes still alive (Ray's agents can outlive a shutdown) are killed by pid."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        started = {pid: t for pid, t in _descendants(os.getpid()).items() if _is_ray(pid)}
        ray.shutdown()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in started.items()):
            time.sleep(0.1)
        for pid, start in started.items():
            if _alive((pid, start)):
                os.kill(pid, signal.SIGKILL)


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, or None."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[19]


def _descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> start time (so a reused pid is not killed)."""
    procs = {int(d.name): _stat(int(d.name)) for d in Path("/proc").iterdir() if d.name.isdigit()}
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, st in procs.items():
            if st is not None and st[0] == parent and pid not in found:
                found[pid] = st[1]
                frontier.append(pid)
    return found


def _is_ray(pid: int) -> bool:
    try:
        return b"ray" in (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


def _alive(proc: tuple[int, str]) -> bool:
    st = _stat(proc[0])
    return st is not None and st[1] == proc[1]


def _busy_workers() -> list[int]:
    """Pids of the actor processes that are decoding a shard (Ray titles them so)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(b"ray::SolveWorker.run"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _unique(recs: list[dict]) -> bool:
    return len(set(evalruns.keys(recs))) == len(recs)


def test_ray_with_two_workers_equals_a_single_run(smollm2, split_problems, single_run,
                                                  ray_address, tmp_path):
    out = tmp_path / "ray.jsonl"
    r = evalruns.run("solve", smollm2, split_problems, "-o", out, *evalruns.SOLVE_ARGS, "--ray",
                     "--ray-workers", "2")
    assert r.exit_code == 0, r.output
    assert "done: 8/8 samples" in r.stderr
    assert evalruns.strip(evalruns.records(out)) == evalruns.strip(single_run)


def test_killed_workers_lose_and_duplicate_nothing(smollm2, split_problems, single_run,
                                                   ray_address, tmp_path):
    out = tmp_path / "killed.jsonl"
    items = load_problems(split_problems)
    opts = SolveOptions(samples=2, parallel=1, max_tokens=16)  # one sample at a time
    killed: list[int] = []

    def kill_one(p) -> None:
        if not killed and p.last is not None:  # a record is in: its worker is mid-shard
            busy = _busy_workers()
            assert busy
            os.kill(busy[0], signal.SIGKILL)
            killed.append(busy[0])

    # one worker that may not be replaced: the run ends early, keeping what finished
    with pytest.raises(ShardsFailed, match="no worker was left.*run the command again") as failure:
        solve_ray(smollm2, items, out, DecodeConfig(), opts,
                  RayOptions(workers=1, replacements=0), template=REFERENCE_PROMPT,
                  on_progress=kill_one)
    partial = evalruns.records(out)
    assert killed and 1 <= len(partial) < 8 and failure.value.progress.done == len(partial)
    reference = {(r["problem_id"], r["sample"]): r for r in evalruns.strip(single_run)}
    assert all(reference[k] == r for k, r in zip(evalruns.keys(partial),
                                                   evalruns.strip(partial)))
    # two workers, one killed mid-shard: its unfinished samples run again elsewhere
    killed.clear()
    p = solve_ray(smollm2, items, out, DecodeConfig(), opts, RayOptions(workers=2),
                  template=REFERENCE_PROMPT, on_progress=kill_one)
    final = evalruns.records(out)
    assert killed and p.done == 8
    assert final[: len(partial)] == partial and _unique(final)
    assert evalruns.strip(final) == evalruns.strip(single_run)


def test_resume_after_the_driver_is_killed(smollm2, split_problems, single_run, ray_address,
                                           tmp_path):
    out = tmp_path / "driver.jsonl"
    args = ["solve", str(smollm2), str(split_problems), "-o", str(out), *evalruns.SOLVE_ARGS,
            "--parallel", "1", "--ray", ray_address, "--ray-workers", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    with (tmp_path / "driver.log").open("wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-c", "from led_local.cli import main; main()", *args],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.05)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    written = out.read_bytes().count(b"\n")
    assert 2 <= written < 8
    final = evalruns.solve(smollm2, split_problems, out, "--ray", "--ray-workers", "2")
    assert _unique(final) and evalruns.strip(final) == evalruns.strip(single_run)


def test_a_worker_with_another_model_file_refuses_to_start(smollm2, ray_address):
    worker = ray.remote(SolveWorker).remote(
        str(smollm2), "0" * 64, build_id(), DecodeConfig(), SolveOptions(samples=1), {},
        longest_prompt=8, n_jobs=1, threads=1, verbose=False)
    try:
        with pytest.raises(LedError, match=r"has SHA-256 [0-9a-f]{16}\.\.\., the driver's has "
                                           r"0{16}\.\.\.: every node needs the same file"):
            ray.get(worker.ready.remote())
    finally:
        ray.kill(worker)


def test_ray_options_need_ray(smollm2, split_problems, tmp_path):
    r = evalruns.run("solve", smollm2, split_problems, "-o", tmp_path / "x.jsonl",
                     "--ray-workers", "2")
    assert r.exit_code == 2 and "--ray-workers applies only with --ray" in r.stderr
    r = evalruns.run("solve", smollm2, split_problems, "-o", tmp_path / "x.jsonl", "--ray",
                     "--ray-cpus-per-worker", "0")
    assert r.exit_code == 2 and "--ray-cpus-per-worker must be > 0" in r.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_skipped_records_and_problem_hashes_match_a_plain_solve(ray_address, tmp_path):
    """The driver writes the skipped records of a prompt too large for the context; the
    worker's records carry the problem hashes the driver computed."""
    model = write_tiny_llama(tmp_path / "tiny.gguf").path
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "big", "question": "x " * 2_500_000, "answer": "1"})
                        + "\n" + json.dumps({"id": "ok", "question": "What is 1 + 1?"}) + "\n")
    items = load_problems(problems)
    cfg, opts = DecodeConfig(method="greedy"), SolveOptions(samples=2, max_tokens=4)
    notices: list[str] = []
    solve(model, items, tmp_path / "plain.jsonl", cfg, opts, template=REFERENCE_PROMPT)
    solve_ray(model, items, tmp_path / "ray.jsonl", cfg, opts, RayOptions(workers=1),
              template=REFERENCE_PROMPT, on_notice=notices.append)
    plain, by_ray = (evalruns.records(tmp_path / f"{n}.jsonl") for n in ("plain", "ray"))
    assert evalruns.strip(by_ray) == evalruns.strip(plain)
    assert [r["finish_reason"] for r in by_ray if r["problem_id"] == "big"] == ["skipped"] * 2
    assert all(r["problem_hash"] for r in by_ray)
    assert any("problem 'big' skipped" in m for m in notices)


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    return subprocess.run([sys.executable, "-c", "from led_local.cli import main; main()",
                           *args], capture_output=True, text=True, env=env, timeout=timeout)


# issue 21, case 15: an address where nothing listens is one line within seconds
def test_case15_an_unreachable_ray_address_is_one_line_at_once(smollm2, split_problems,
                                                               tmp_path):
    t0 = time.monotonic()
    p = _cli("solve", str(smollm2), str(split_problems), "-o", str(tmp_path / "x.jsonl"),
             "--ray", "127.0.0.1:1", timeout=120)
    assert p.returncode == 2 and "cannot start or reach Ray at 127.0.0.1:1" in p.stderr
    assert "Traceback" not in p.stderr and "WARNING" not in p.stderr
    assert time.monotonic() - t0 < 60


# issue 21, case 14: a worker that no node can hold is refused instead of waiting forever
def test_case14_a_worker_larger_than_any_node_is_refused(smollm2, split_problems, ray_address,
                                                         tmp_path):
    p = _cli("solve", str(smollm2), str(split_problems), "-o", str(tmp_path / "x.jsonl"),
             "--ray", ray_address, "--ray-workers", "1", "--ray-cpus-per-worker", "64",
             timeout=180)
    assert p.returncode == 2 and "no node of the Ray cluster holds a worker of 64.0 CPUs" \
        in p.stderr, p.stderr[-2000:]


def _naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


# issue 21, case 23: a local instance dies with its driver, kill -9 included, and leaves no
# session directory
def test_case23_the_local_instance_dies_with_a_killed_driver(smollm2, split_problems,
                                                             tmp_path):
    sessions = Path("/tmp/ray")
    before = set(sessions.glob("session_2*"))
    out = tmp_path / "local.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    with (tmp_path / "driver.log").open("wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-c", "from led_local.cli import main; main()", "solve",
             str(smollm2), str(split_problems), "-o", str(out), *evalruns.SOLVE_ARGS,
             "--parallel", "1", "--ray", "--ray-workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.1)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        (session,) = set(sessions.glob("session_2*")) - before
        assert _naming(str(session))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_naming(str(session)) or session.exists()):
        time.sleep(0.2)
    assert _naming(str(session)) == [] and not session.exists()


# issue 21, case 4: nobody who reaches the local instance's ports can join it without its token
_INTRUDER = """
import os, subprocess, sys
from led_local.eval.ray_solve import RayOptions, connect, disconnect
import ray
assert connect(RayOptions())
address = ray.get_runtime_context().gcs_address
env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
join = "import ray; ray.init(address=%r, logging_level='ERROR'); print('JOINED')" % address
p = subprocess.run([sys.executable, "-c", join], env=env, capture_output=True, text=True,
                   timeout=120)
print("JOINED" if "JOINED" in p.stdout else "REFUSED")
disconnect()
print("TOKEN LEFT" if "RAY_AUTH_TOKEN" in os.environ else "CLEAN")
"""


def test_case4_the_local_instance_refuses_clients_without_its_token():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *sys.path])
    p = subprocess.run([sys.executable, "-c", _INTRUDER], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["REFUSED", "CLEAN"], p.stdout
