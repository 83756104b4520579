"""HAPO's adaptive temperature: the statistics and temperature table exactly, the vLLM-order
filters, and the method end to end (calibrate, generate, solve frozen and rolling)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from led_local.cli import main
from led_local.decoding.filters import filtered_probs, sample_token
from led_local.decoding.hapo import adaptive_temperature, compute_stats, scaled_entropy

GSM8K = Path(__file__).resolve().parent / "data" / "gsm8k-3.jsonl"
CALIBRATION = [0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
# H_t -> (h_hat code, T code, h_hat signed, T signed), T0 = 1, tau = 0.05
TABLE = {
    0.001: (1.0, 1.05, -1.0, 0.95),
    0.1: (0.565412, 1.028271, -0.565412, 0.971729),
    1.0: (0.130824, 1.006541, -0.130824, 0.993459),
    2.0: (0.0, 1.0, 0.0, 1.0),
    3.0: (0.584962, 1.029248, 0.584962, 1.029248),
    10.0: (1.0, 1.05, 1.0, 1.05),
}


def test_statistics_match_the_oracle():
    s = compute_stats(CALIBRATION, pivot=0.8)
    assert s.mu == pytest.approx(math.log(2), abs=1e-6)  # sorted index round(7.2) = 7
    assert (round(s.sigma, 6), round(s.s_pos, 6), round(s.s_neg, 6)) == \
        (2.430765, 3.506853, -0.458781)
    assert s.n == 10 and compute_stats([], pivot=0.8) is None


@pytest.mark.parametrize("h_t", sorted(TABLE))
def test_temperature_table_exactly(h_t):
    s = compute_stats(CALIBRATION, pivot=0.8)
    hc, tc, hs, ts = TABLE[h_t]
    got = (scaled_entropy(h_t, s, variant="code"),
           adaptive_temperature(h_t, s, t0=1.0, tau=0.05, variant="code"),
           scaled_entropy(h_t, s, variant="signed"),
           adaptive_temperature(h_t, s, t0=1.0, tau=0.05, variant="signed"))
    assert tuple(round(x, 6) + 0.0 for x in got) == (hc, tc, hs, ts)


def test_without_statistics_the_temperature_is_t0():
    assert adaptive_temperature(0.3, None, t0=0.7, tau=0.05) == 0.7


def test_vllm_filter_order():
    z = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    # min-p relative to the top probability: 0.2 x 0.5 = 0.1 drops the last token
    idx, p = filtered_probs(z, temperature=1.0, min_p=0.2)
    assert idx.tolist() == [0, 1, 2] and p.sum() == pytest.approx(1.0)
    # top-p keeps a token while the mass above it is below p: 0.5 < 0.7 <= 0.8
    idx, _ = filtered_probs(z, temperature=1.0, top_p=0.7)
    assert idx.tolist() == [0, 1]
    idx, _ = filtered_probs(z, temperature=1.0, top_k=3, top_p=0.83)  # 0.8 / 0.95 > 0.83
    assert idx.tolist() == [0, 1]
    # SwiReasoning's convention: min-p absolute, top-p keeps while the mass above is <= p
    idx, _ = filtered_probs(z, temperature=1.0, min_p=0.2, convention="hf")
    assert idx.tolist() == [0, 1]
    idx, _ = filtered_probs(z, temperature=2.0, top_k=2, convention="hf")
    assert idx.tolist() == [0, 1]
    assert sample_token(z, temperature=0.0, rng=np.random.default_rng(0)) == 0


def test_sampling_follows_the_filtered_distribution():
    z = np.log(np.array([0.6, 0.3, 0.1]))
    rng = np.random.default_rng(3)
    draws = np.bincount([sample_token(z, temperature=1.0, rng=rng) for _ in range(4000)],
                        minlength=3) / 4000
    assert np.allclose(draws, [0.6, 0.3, 0.1], atol=0.03)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def calibration(smollm2, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hapo") / "cal.json"
    r = run("hapo-calibrate", smollm2, GSM8K, "-o", out, "-n", "2", "--max-tokens", "12",
            "--limit", "2")
    assert r.exit_code == 0, r.output
    return out


def test_calibration_file_holds_every_token_entropy(calibration):
    data = json.loads(calibration.read_text())
    assert data["n_tokens"] == len(data["entropies"]) > 0
    assert data["stats"] == compute_stats(data["entropies"], pivot=0.8).to_json()


def test_generate_reports_the_temperatures_and_reproduces(smollm2, calibration):
    args = ("generate", smollm2, "-p", "What is 2+3?", "-m", "hapo", "--hapo-stats",
            calibration, "-n", "10", "--seed", "4", "--json")
    a, b = json.loads(run(*args).stdout), json.loads(run(*args).stdout)
    assert a["tokens"] == b["tokens"]
    h = a["hapo"]
    assert 0.95 - 1e-9 <= h["t_min"] <= h["t_mean"] <= h["t_max"] <= 1.05 + 1e-9
    assert h["stats"]["n"] == json.loads(calibration.read_text())["n_tokens"]
    assert a["params"]["hapo_variant"] == "signed" and a["params"]["temperature"] == 1.0


def _solve(model, out, *extra):
    r = run("solve", model, GSM8K, "-o", out, "-n", "2", "--max-tokens", "10", "-m", "hapo",
            *extra)
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in Path(out).read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k != "time_s"} for r in recs),
                  key=lambda r: (r["problem_id"], r["sample"]))


@pytest.mark.parametrize("mode", ["frozen", "rolling"])
def test_solve_is_batch_invariant(smollm2, calibration, tmp_path, mode):
    extra = ["--hapo-stats", calibration] if mode == "frozen" else ["--hapo-rolling", "1"]
    a = _solve(smollm2, tmp_path / "a.jsonl", "--parallel", "1", *extra)
    b = _solve(smollm2, tmp_path / "b.jsonl", "--parallel", "16", *extra)
    assert len(a) == 6 and a == b
    if mode == "rolling":  # batch 0 plain, batch b from batch b-1's entropies
        by_problem = [[r for r in a if r["problem_id"] == p] for p in
                      dict.fromkeys(r["problem_id"] for r in a)]
        assert all(r["hapo"]["stats"] is None for r in by_problem[0])
        assert all(r["hapo"]["t_min"] == r["hapo"]["t_max"] == 1.0 for r in by_problem[0])
        prev = [h for r in by_problem[0] for h in r["hapo"]["entropies"]]
        assert by_problem[1][0]["hapo"]["stats"] == compute_stats(prev).to_json()


def test_hapo_option_errors(smollm2, calibration):
    r = run("generate", smollm2, "-p", "hi", "-m", "hapo")
    assert r.exit_code == 2 and "--hapo-stats" in r.output
    r = run("generate", smollm2, "-p", "hi", "--hapo-tau", "0.1")
    assert r.exit_code == 2 and "--hapo-tau applies to --method hapo" in r.output
    r = run("generate", smollm2, "-p", "hi", "-m", "hapo", "--hapo-stats", calibration,
            "--hapo-tau", "2")
    assert r.exit_code == 2 and "--hapo-tau must be in [0, 1], got 2.0" in r.output
    r = run("generate", smollm2, "-p", "hi", "-m", "hapo", "--hapo-stats", GSM8K)
    assert r.exit_code == 2 and "is not JSON" in r.output


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": [0.5, "x"]}', "entropy 1 must be"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": [NaN]}', "entropy 0 must be"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": [-1]}', "entropy 0 must be"),
    ("[" * 100_000, "is not JSON"),
])
def test_hostile_statistics_files_are_one_line_errors(smollm2, tmp_path, content, message):
    stats = tmp_path / "stats.json"
    if content is None:
        stats.mkdir()
    else:
        stats.write_text(content)
    r = run("generate", smollm2, "-p", "hi", "-m", "hapo", "--hapo-stats", stats, "-n", "1")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_rolling_statistics_refuse_malformed_recorded_entropies(tmp_path):
    from led_local.decoding.hapo import recorded_entropies
    from led_local.errors import LedError

    where = str(tmp_path / "run.jsonl")
    ok = {"problem_id": "a", "sample": 0, "hapo": {"entropies": [0.5, 1]}}
    assert recorded_entropies(ok, where=where) == [0.5, 1.0]
    assert recorded_entropies({"problem_id": "a", "sample": 0}, where=where) == []  # skipped
    for bad in ("x", {"entropies": "x"}, {"entropies": [True]}, {"entropies": [float("inf")]}):
        with pytest.raises(LedError, match="problem 'a' sample 0: 'hapo.entropies'"):
            recorded_entropies({"problem_id": "a", "sample": 0, "hapo": bad}, where=where)


def test_calibrate_never_writes_over_an_input_nor_fails_on_a_huge_question(smollm2, tmp_path):
    r = run("hapo-calibrate", smollm2, GSM8K, "-o", GSM8K)
    assert r.exit_code == 2 and "is the problem file" in r.output
    problems = tmp_path / "big.jsonl"
    problems.write_text(json.dumps({"id": "big", "question": "x " * 2_500_000, "answer": "1"})
                        + "\n")
    r = run("hapo-calibrate", smollm2, problems, "-o", tmp_path / "cal.json")
    assert r.exit_code == 2 and "problem 'big' left out" in r.output
    assert "no problem's prompt fits" in r.output and not (tmp_path / "cal.json").exists()


def test_a_failed_calibration_write_is_an_output_error(tmp_path):
    from led_local.decoding.hapo import save_entropies
    from led_local.errors import OutputError

    with pytest.raises(OutputError, match="cannot write"):
        save_entropies(tmp_path / "missing" / "cal.json", [0.5], meta={})
    assert not list(tmp_path.iterdir())


def test_a_served_request_keeps_the_servers_hapo_and_swir_settings():
    from led_local.decoding.hapo import HAPOConfig
    from led_local.decoding.methods import DecodeConfig
    from led_local.decoding.swir import SwirConfig
    from led_local.serve.protocol import CompletionRequest

    base = DecodeConfig(method="hapo", temperature=1.0, hapo=HAPOConfig(tau=0.1, variant="code"),
                        swir=SwirConfig(window=8))
    cfg = CompletionRequest(prompt="hi", top_k=5, top_p=0.9).decode_config(base)
    assert (cfg.method, cfg.hapo, cfg.swir, cfg.top_k, cfg.top_p) == \
        ("hapo", base.hapo, base.swir, 5, 0.9)


def test_batched_entropies_are_the_single_row_ones_to_rounding():
    from led_local.decoding.filters import entropy, softmax64, softmax_rows
    from led_local.decoding.hapo import token_entropies

    rng = np.random.default_rng(5)
    # rows of different shapes: peaked, flat, one -inf logit (p = 0 adds nothing)
    z = rng.standard_normal((4, 3000)).astype(np.float32) * np.array([[8], [0.1], [2], [3]],
                                                                      np.float32)
    z[3, 7] = -np.inf
    h = token_entropies(z)
    for r in range(4):
        assert h[r] == pytest.approx(entropy(softmax64(z[r])), rel=1e-12, abs=1e-15)
        assert token_entropies(z[r]) == h[r]  # a row alone: the same bits as in the batch
        # p itself is softmax64's, bit for bit (the sampled token depends on it)
        assert np.array_equal(softmax_rows(z[r])[0], softmax64(z[r]))
    assert np.isfinite(h).all()


def test_unfiltered_sampling_and_entropies_are_the_same_with_work_arrays():
    """sample_token's unfiltered path (one array, in place, borrowed from a Scratch or not)
    draws exactly the token of filtered_probs + draw, and softmax_rows and token_entropies
    give the plain formula's values bit for bit: -inf logits, ties, float32 and float64."""
    from led_local.decoding.filters import Scratch, entropy_rows, softmax_rows
    from led_local.decoding.hapo import token_entropies
    from led_local.decoding.samplers import draw

    rng = np.random.default_rng(7)
    scratch = Scratch()
    for trial in range(1500):
        v = int(rng.integers(2, 2000))
        z = rng.standard_normal(v) * rng.uniform(0.1, 20)
        z = z.astype(np.float32) if trial % 2 else z
        if trial % 3 == 0:
            z[rng.integers(0, v, size=v // 3)] = -np.inf
            z[0] = 1.0
        if trial % 5 == 0:
            z = np.round(z)
        t = float(rng.uniform(0.05, 3))
        seed = int(rng.integers(1 << 30))
        idx, p = filtered_probs(z, temperature=t)
        want = int(idx[draw(p, np.random.default_rng(seed))])
        assert sample_token(z, temperature=t, rng=np.random.default_rng(seed),
                            scratch=scratch) == want
        assert sample_token(z, temperature=t, rng=np.random.default_rng(seed)) == want
        rows = np.stack([z, z[::-1]])
        x = rows.astype(np.float64) - rows.max(axis=-1, keepdims=True)  # the plain formula
        e = np.exp(x)
        ref = e / e.sum(axis=-1, keepdims=True), x - np.log(e.sum(axis=-1, keepdims=True))
        for got in (softmax_rows(rows), softmax_rows(rows, scratch=scratch)):
            assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
        h = entropy_rows(*ref)
        assert np.array_equal(token_entropies(rows, scratch=scratch), h)
        assert np.array_equal(token_entropies(rows), h)
