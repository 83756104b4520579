"""passk / compare --select repexp over synthetic run files with embeddings."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from led_local.cli import main
from led_local.eval.passk import pass_at_k
from led_local.eval.repexp import Pools, evaluate_run, verdict


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_run(path: Path, pools: dict[str, tuple[np.ndarray, np.ndarray]], *,
              embed: bool = True) -> Path:
    lines = []
    for pid, (feats, correct) in pools.items():
        for i, (f, c) in enumerate(zip(feats, correct)):
            rec = {"problem_id": pid, "sample": i, "method": "sample", "text": "x",
                   "answer": "1", "gold": "1", "correct": bool(c)}
            if embed:
                rec["embedding"] = base64.b64encode(f.astype("<f4").tobytes()).decode()
                rec["embedding_dim"] = f.shape[0]
            lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


def isolated_correct(n_problems: int = 12, n: int = 16, d: int = 24) -> dict:
    """Pools where the one correct answer lies far from a tight cluster of wrong ones."""
    rng = np.random.default_rng(0)
    pools = {}
    for p in range(n_problems):
        feats = rng.normal(scale=0.01, size=(n, d)) + rng.normal(size=d)
        correct = np.zeros(n, bool)
        j = int(rng.integers(n))
        feats[j] += 5 * rng.normal(size=d)
        correct[j] = True
        pools[f"p{p}"] = (feats, correct)
    return pools


def unrelated(n_problems: int = 30, n: int = 16, d: int = 24) -> dict:
    """Pools whose features say nothing about correctness (some all wrong, some all right)."""
    rng = np.random.default_rng(1)
    pools = {}
    for p in range(n_problems):
        rate = [0.0, 1.0, 0.2, 0.5][p % 4]
        pools[f"q{p}"] = (rng.normal(size=(n, d)), rng.random(n) < rate)
    return pools


def test_passk_select_repexp_json(tmp_path):
    pools = unrelated()
    path = write_run(tmp_path / "r.jsonl", pools)
    r = run("passk", path, "--select", "repexp", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("ks", "pass_at_k_random", "pass_at_k_repexp", "samples_to_correct_random",
                "samples_to_correct_repexp", "n_problems", "n_no_correct"):
        assert key in out
    assert out["ks"] == list(range(1, 17))
    assert out["n_problems"] == 30
    assert out["n_no_correct"] == sum(not c.any() for _, c in pools.values())
    assert out["n_all_correct"] == sum(c.all() for _, c in pools.values())
    random = [np.mean([pass_at_k(16, int(c.sum()), k) for _, c in pools.values()])
              for k in out["ks"]]
    np.testing.assert_allclose(out["pass_at_k_random"], random)
    stc = np.mean([17 / (c.sum() + 1) for _, c in pools.values()])
    assert out["samples_to_correct_random"] == pytest.approx(stc)
    per = evaluate_run(Pools(path), seed=0)
    assert out["samples_to_correct_repexp"] == pytest.approx(
        np.mean([p["samples_to_correct_repexp"] for p in per.values()]))
    assert out["pass_at_k_repexp"][-1] == pytest.approx(out["pass_at_k_random"][-1])
    lo, hi = out["samples_to_correct_diff_ci"]
    assert lo <= 0 <= hi
    assert out["verdict"] == "no evidence of a difference"
    assert "no evidence of a difference" in run("passk", path, "--select", "repexp").stdout


def test_repexp_finds_an_isolated_correct_answer_first(tmp_path):
    path = write_run(tmp_path / "r.jsonl", isolated_correct())
    out = json.loads(run("passk", path, "--select", "repexp", "--json", "--dim", "0").stdout)
    # first pick the outlier (1 of 16) or else pick it next
    assert out["samples_to_correct_repexp"] == pytest.approx(1 / 16 + 2 * 15 / 16)
    assert out["samples_to_correct_random"] == pytest.approx(17 / 2)
    assert out["samples_to_correct_diff_ci"][1] < 0
    assert out["verdict"] == "RepExp better than random"
    text = run("passk", path, "--select", "repexp", "--k", "1,2").stdout
    assert "pass@2" in text and "RepExp better than random" in text
    projected = json.loads(run("passk", path, "--select", "repexp", "--json").stdout)
    assert projected["samples_to_correct_repexp"] < 3


def test_projection_seed_is_reproducible(tmp_path):
    path = write_run(tmp_path / "r.jsonl", unrelated(n_problems=4))
    a = run("passk", path, "--select", "repexp", "--json", "--seed", "3").stdout
    assert a == run("passk", path, "--select", "repexp", "--json", "--seed", "3").stdout
    assert json.loads(a)["seed"] == 3


def test_verdict_directions():
    assert verdict(-1.0, 2.0, lower_is_better=True) == "no evidence of a difference"
    assert verdict(-2.0, -1.0, lower_is_better=True) == "RepExp better than random"
    assert verdict(1.0, 2.0, lower_is_better=True) == "RepExp worse than random"
    assert verdict(1.0, 2.0, lower_is_better=False) == "RepExp better than random"


def test_refusals_name_the_fix(tmp_path):
    plain = write_run(tmp_path / "plain.jsonl", unrelated(n_problems=2), embed=False)
    r = run("passk", plain, "--select", "repexp")
    assert r.exit_code == 2
    assert "solve --embed" in r.output and "Traceback" not in r.output
    assert run("compare", plain, plain, "--select", "repexp").exit_code == 2
    r = run("passk", plain, "--dim", "64")
    assert r.exit_code == 2 and "--select repexp" in r.output
    assert run("passk", plain, "--lambda", "0.5").exit_code == 2
    good = write_run(tmp_path / "good.jsonl", unrelated(n_problems=2))
    r = run("passk", good, "--select", "repexp", "--lambda", "0")
    assert r.exit_code == 2 and "--lambda" in r.output
    assert run("passk", good, "--select", "repexp", "--k", "17").exit_code == 2


def test_compare_select_repexp_and_plot(tmp_path):
    a = write_run(tmp_path / "a.jsonl", unrelated(n_problems=8))
    b = write_run(tmp_path / "b.jsonl", isolated_correct(n_problems=8))
    # different problem ids: nothing in common
    assert run("compare", a, b, "--select", "repexp").exit_code == 2
    b = write_run(tmp_path / "b.jsonl", {f"q{i}": v for i, v in
                                         enumerate(isolated_correct(n_problems=8).values())})
    plot = tmp_path / "k.png"
    r = run("compare", a, b, "--select", "repexp", "--plot", plot, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n_common"] == 8 and out["ks"] == list(range(1, 17))
    assert set(out["per_k"]["1"]) >= {"pass@k_a", "pass@k_b", "diff", "ci_low", "ci_high",
                                      "random_a", "random_b"}
    assert out["samples_to_correct_b"] < out["samples_to_correct_a"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = run("compare", a, b, "--select", "repexp").stdout
    assert "B - A" in text and "samples to correct" in text


def test_skipped_problem_counts_as_no_correct_answer(tmp_path):
    """A problem whose prompt did not fit has only skipped records (no text, no embedding):
    it stays in the run as a pool without a correct answer, as plain passk counts it."""
    pools = isolated_correct(n_problems=3)
    path = write_run(tmp_path / "r.jsonl", pools)
    with path.open("a") as f:
        for i in range(16):
            f.write(json.dumps({"problem_id": "huge", "sample": i, "method": "sample",
                                "text": "", "answer": None, "gold": "1", "correct": False,
                                "n_tokens": 0, "finish_reason": "skipped",
                                "error": "prompt too long"}) + "\n")
    r = run("passk", path, "--select", "repexp", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["n_problems"] == 4 and rep["skipped_problems"] == 1
    assert rep["n_no_correct"] == 1
    assert rep["problems"]["huge"]["samples_to_correct_repexp"] == 17
    plain = json.loads(run("passk", path, "--json").stdout)
    assert rep["pass_at_k_random"][0] == pytest.approx(plain["pass@1"])
    assert rep["pass_at_k_random"][-1] == pytest.approx(plain["pass@16"])
    assert "1 problems skipped" in run("passk", path, "--select", "repexp").stdout
    # a problem with both skipped and answered samples is refused, not silently mixed
    with path.open("a") as f:
        f.write(json.dumps({"problem_id": "p0", "sample": 16, "method": "sample", "text": "",
                            "answer": None, "gold": "1", "correct": False,
                            "finish_reason": "skipped"}) + "\n")
    r = run("passk", path, "--select", "repexp")
    assert r.exit_code == 2 and "mixes skipped and answered" in r.output
