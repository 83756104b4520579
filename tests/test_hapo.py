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


# -- T0 != 1: the statistics at the sampling temperature, the rule as the released sampler ---

T0 = 0.6


def _entropy(row, t: float) -> float:
    """H of softmax(row / t) in plain Python."""
    z = [x / t for x in row]
    top = max(z)
    e = [math.exp(x - top) for x in z]
    s = sum(e)
    return -sum(x / s * math.log(x / s) for x in e)


def _stats(entropies, pivot):
    """HAPO's compute_entropy_h in plain Python: nearest-rank pivot, RMS about it, one-sided
    scales."""
    ell = sorted(math.log(max(h, 1e-8)) for h in entropies)
    mu = ell[round(pivot * (len(ell) - 1))]
    sigma = math.sqrt(max(sum((x - mu) ** 2 for x in ell) / len(ell), 1e-8))
    z = [(x - mu) / sigma for x in ell]
    return mu, sigma, 1 / max(max([x for x in z if x > 0], default=0.0), 1e-8), \
        1 / min(min([x for x in z if x < 0], default=0.0), -1e-8)


def _released_temperature(row, stats, *, t0: float, tau: float) -> float:
    """compute_entropy_based_temperature of the released sampler (vllm/v1/sample/sampler.py):
    the entropy of the raw logits, h_hat = h s_pos or h s_neg, clamped, T0 (1 + h_hat tau)."""
    mu, sigma, s_pos, s_neg = stats
    h = (math.log(max(_entropy(row, 1.0), 1e-6)) - mu) / (sigma + 1e-6)
    return t0 * (1.0 + max(-1.0, min(1.0, h * s_pos if h > 0 else h * s_neg)) * tau)


def test_pivot_rank_is_rounded_not_floored():
    # 12 entropies: rank 0.8 x 11 = 8.8 rounds to 9 (floor: 8); 6 at pivot 0.5: 2.5 -> 2
    h = [0.05 * (i + 1) ** 2 for i in range(12)]
    assert compute_stats(h, pivot=0.8).mu == math.log(h[9])
    assert compute_stats(h[:6], pivot=0.5).mu == math.log(h[2])  # half to even
    assert compute_stats(h[:8], pivot=0.5).mu == math.log(h[4])  # 3.5 -> 4


@pytest.mark.parametrize("h_t", sorted(TABLE))
def test_temperature_table_at_t0_06(h_t):
    """T = T0 (1 + tau h_hat), not T0 + tau h_hat: at T0 = 0.6 the table's T0 = 1 values
    scale by 0.6."""
    s = compute_stats(CALIBRATION, pivot=0.8)
    _, tc, _, ts = TABLE[h_t]
    assert adaptive_temperature(h_t, s, t0=T0, tau=0.05, variant="code") == \
        pytest.approx(T0 * tc, abs=1e-6)
    assert adaptive_temperature(h_t, s, t0=T0, tau=0.05, variant="signed") == \
        pytest.approx(T0 * ts, abs=1e-6)


def test_code_variant_is_the_released_sampler_at_t0_06():
    """Statistics from the calibration rows' entropies at T0 (the authors' trainer), each
    token's temperature from its raw entropy (their sampler), then vLLM's filters at that
    temperature: token by token, against a plain-Python oracle."""
    from led_local.decoding.hapo import HAPOConfig, HAPOTrace, hapo_pick, tempered_entropies

    rng = np.random.default_rng(11)
    calib = rng.normal(0, 1, (40, 30)) * rng.uniform(0.3, 4.0, (40, 1))
    temp = [_entropy(r, T0) for r in calib]
    np.testing.assert_allclose(tempered_entropies(calib, T0), temp, rtol=1e-10)
    assert max(abs(a - _entropy(r, 1.0)) for a, r in zip(temp, calib)) > 0.1  # it matters
    stats = compute_stats(tempered_entropies(calib, T0), pivot=0.8)
    oracle = _stats(temp, 0.8)
    assert (stats.mu, stats.sigma, stats.s_pos, stats.s_neg) == pytest.approx(oracle,
                                                                               rel=1e-9)
    cfg = HAPOConfig(tau=0.3, variant="code", stats=stats)
    trace = HAPOTrace(stats, [], [])
    rows = rng.normal(0, 1, (60, 30)) * rng.uniform(0.3, 4.0, (60, 1))
    for i, row in enumerate(rows):
        t = _released_temperature(row, oracle, t0=T0, tau=0.3)
        idx, p = filtered_probs(row, temperature=t, top_k=10, top_p=0.9, min_p=0.05)
        u = np.random.default_rng(i).random()
        want = int(idx[min(int(np.searchsorted(np.cumsum(p), u * p.sum(), side="right")),
                           len(p) - 1)])
        got = hapo_pick(row, t0=T0, cfg=cfg, trace=trace, rng=np.random.default_rng(i),
                        top_k=10, top_p=0.9, min_p=0.05)
        assert got == want
        assert trace.temperatures[-1] == pytest.approx(t, rel=1e-9)
        assert trace.entropies[-1] == pytest.approx(_entropy(row, T0), rel=1e-9)
    assert len(set(np.round(trace.temperatures, 6))) > 10


def _stats_file(path: Path, temperature: float | None) -> Path:
    data = {"format": "led-local-hapo-entropies/1", "entropies": CALIBRATION}
    if temperature is not None:
        data["temperature"] = temperature
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("made", "run_t0", "ok"), [
    (0.6, 0.6, True), (0.6, 1.0, False), (None, 1.0, True), (None, 0.6, False),
    (1.0, 0.7, False), (0.6, 0.0, True),  # greedy: the statistics are never used
])
def test_a_statistics_file_at_another_temperature_is_refused(tmp_path, made, run_t0, ok):
    from led_local.decoding.methods import build_config
    from led_local.errors import ConfigError

    f = _stats_file(tmp_path / "s.json", made)
    given = {"hapo_stats": str(f), "temperature": run_t0}
    if ok:
        assert build_config("hapo", given).hapo.stats == compute_stats(CALIBRATION)
        return
    with pytest.raises(ConfigError) as e:
        build_config("hapo", given)
    assert e.value.option == "hapo_stats" and "calibrate at `temperature`" in e.value.message


def test_params_carry_the_statistics_temperature_only_when_it_is_not_1(tmp_path):
    from led_local.decoding.methods import build_config

    at1 = build_config("hapo", {"hapo_stats": str(_stats_file(tmp_path / "a.json", None))})
    assert "hapo_stats_temperature" not in at1.params()
    at06 = build_config("hapo", {"hapo_stats": str(_stats_file(tmp_path / "b.json", 0.6)),
                                 "temperature": 0.6})
    assert at06.params()["hapo_stats_temperature"] == 0.6


def test_a_request_may_not_change_the_temperature_of_the_servers_statistics(tmp_path):
    from led_local.decoding.methods import build_config
    from led_local.errors import ConfigError

    server = build_config("hapo", {"hapo_stats": str(_stats_file(tmp_path / "s.json", 0.6)),
                                   "temperature": 0.6})
    assert build_config("hapo", {"temperature": 0.6}, base=server).hapo == server.hapo
    with pytest.raises(ConfigError) as e:
        build_config("hapo", {"temperature": 0.9}, base=server)
    assert e.value.option == "temperature"


# -- what mutation testing found untested (bench/mutate.py) ---------------------------------

def test_degenerate_statistics_use_the_authors_floors():
    """Entropies of 0 are floored at 1e-8 before the log; equal log-entropies give sigma
    sqrt(1e-8) = 1e-4; a side without values counts as 0 before its 1e-8 floor."""
    s = compute_stats([0.5] * 5, pivot=0.8)
    assert (s.mu, s.sigma, s.s_pos, s.s_neg) == (math.log(0.5), math.sqrt(1e-8), 1e8, -1e8)
    h = [0.0, 1.0, 2.0]
    s = compute_stats(h, pivot=0.5)
    ell = [math.log(1e-8), 0.0, math.log(2.0)]
    sigma = math.sqrt(sum(x * x for x in ell) / 3)
    assert s.mu == 0.0 and s.sigma == pytest.approx(sigma, rel=1e-12)
    assert s.s_pos == pytest.approx(sigma / math.log(2.0), rel=1e-12)
    assert s.s_neg == pytest.approx(sigma / math.log(1e-8), rel=1e-12)


def test_configurations_are_frozen_and_default_to_the_options():
    from dataclasses import FrozenInstanceError

    from led_local.decoding import hapo

    cfg = hapo.HAPOConfig()
    assert (cfg.tau, cfg.pivot, cfg.variant) == (hapo.TAU.default, hapo.PIVOT.default,
                                                 hapo.VARIANT.default)
    stats = compute_stats(CALIBRATION)
    assert hash(hapo.HAPOConfig(stats=stats)) == hash(hapo.HAPOConfig(stats=stats))
    for obj, field in ((cfg, "tau"), (stats, "mu")):
        with pytest.raises(FrozenInstanceError):
            setattr(obj, field, 0.1)


def test_unfiltered_pick_samples_the_whole_tempered_distribution():
    from led_local.decoding.hapo import HAPOConfig, HAPOTrace, hapo_pick

    z = np.array([1.0, 0.5, 0.0, -0.5, -4.0])
    cfg = HAPOConfig()
    for seed in range(60):
        trace = HAPOTrace(None, [], [])
        got = hapo_pick(z, t0=0.8, cfg=cfg, trace=trace, rng=np.random.default_rng(seed))
        want = sample_token(z, temperature=0.8, rng=np.random.default_rng(seed))
        assert got == want
    assert trace.summary() == {"stats": None, "t_mean": 0.8, "t_min": 0.8, "t_max": 0.8}


def test_greedy_records_the_raw_entropy():
    from led_local.decoding.hapo import (
        HAPOConfig,
        HAPOTrace,
        hapo_pick,
        stats_temperature,
        tempered_entropies,
        token_entropies,
    )

    z = np.array([2.0, 1.0, 0.0])
    trace = HAPOTrace(compute_stats(CALIBRATION), [], [])
    assert hapo_pick(z, t0=0.0, cfg=HAPOConfig(), trace=trace, rng=None) == 0
    assert trace.entropies == [pytest.approx(float(token_entropies(z)), rel=1e-12)]
    assert trace.temperatures == [0.0]
    assert stats_temperature(0.0) == 1.0 and stats_temperature(0.7) == 0.7
    np.testing.assert_array_equal(tempered_entropies(z, 1.0), token_entropies(z))
    assert tempered_entropies(z, 2.0) > tempered_entropies(z, 1.0)


def test_frozen_and_rolling_runs_record_their_own_parameters_and_lists():
    from led_local.decoding import hapo
    from led_local.decoding.hapo import HAPOTrace
    from led_local.decoding.methods import DecodeConfig
    from led_local.decoding.methods import build_config as build

    rolling = build("hapo", {"hapo_rolling": 4})
    frozen = DecodeConfig(method="hapo", temperature=1.0,
                          hapo=hapo.HAPOConfig(stats=compute_stats(CALIBRATION)))
    assert rolling.params()["hapo_rolling"] == 4 and "hapo_stats" not in rolling.params()
    assert frozen.params()["hapo_stats"] == compute_stats(CALIBRATION).to_json()
    assert "hapo_rolling" not in frozen.params()
    assert hapo.METHOD.full_records(rolling) and not hapo.METHOD.full_records(frozen)
    seq = type("Seq", (), {"trace": HAPOTrace(None, [0.5], [1.0])})()
    assert "entropies" not in hapo.METHOD.record(seq, frozen)["hapo"]
    assert hapo.METHOD.record(seq, rolling, full=True)["hapo"]["entropies"] == [0.5]


@pytest.mark.parametrize(("content", "message"), [
    ("[1, 2]", "is not a led-local hapo-calibrate file"),
    ('{"format": "other", "entropies": [0.5]}', "is not a led-local hapo-calibrate file"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": []}', "is not a led-local"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": {"a": 1}}', "is not a led-local"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": [true]}', "entropy 0 must be"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": [0.5, -0.0001]}', "entropy 1"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": [1e999]}', "entropy 0 must be"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": [0.5], "temperature": 0}',
     "temperature must be a number > 0"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": [0.5], "temperature": true}',
     "temperature must be a number > 0"),
    ('{"format": "led-local-hapo-entropies/1", "entropies": [0.5], "temperature": "1"}',
     "temperature must be a number > 0"),
])
def test_statistics_files_are_checked(tmp_path, content, message):
    from led_local.decoding.hapo import load_entropies
    from led_local.errors import ConfigError

    f = tmp_path / "s.json"
    f.write_text(content)
    with pytest.raises(ConfigError) as e:
        load_entropies(f)
    assert message in e.value.message and e.value.option == "hapo_stats"


def test_a_statistics_file_may_hold_zero_entropies_and_be_exactly_the_size_limit(
        tmp_path, monkeypatch):
    from led_local.decoding import hapo
    from led_local.errors import ConfigError

    f = tmp_path / "s.json"
    f.write_text('{"format": "led-local-hapo-entropies/1", "entropies": [0, 0.0, 2]}')
    assert hapo.load_entropies(f) == [0.0, 0.0, 2.0]
    monkeypatch.setattr(hapo, "MAX_STATS_BYTES", f.stat().st_size)
    assert hapo.load_entropies(f) == [0.0, 0.0, 2.0]
    monkeypatch.setattr(hapo, "MAX_STATS_BYTES", f.stat().st_size - 1)
    with pytest.raises(ConfigError, match="larger than"):
        hapo.load_entropies(f)


def test_the_size_limit_is_the_documented_256_mib():
    from led_local.decoding import hapo

    doc = (Path(__file__).resolve().parent.parent / "docs" / "HAPO.md").read_text()
    assert "at most 256 MiB" in doc and hapo.MAX_STATS_BYTES == 256 * 2 ** 20


def test_the_rule_floors_the_token_entropy_at_1e_6_and_sigma_by_1e_6():
    from led_local.decoding.hapo import HAPOStats

    stats = HAPOStats(mu=0.0, sigma=100.0, s_pos=1.0, s_neg=-1.0, pivot=0.8, n=1)
    want = math.log(1e-6) / (100.0 + 1e-6)  # far from the clamp: the floors show
    assert scaled_entropy(0.0, stats, variant="signed") == pytest.approx(want, rel=1e-13)
    assert scaled_entropy(1e-7, stats, variant="code") == pytest.approx(-want, rel=1e-13)


def test_the_summary_reports_the_range_of_temperatures_to_six_places():
    from led_local.decoding.hapo import HAPOTrace, recorded_entropies

    trace = HAPOTrace(None, [0.0, 1.5], [0.612345678, 0.598765432, 0.6])
    assert trace.summary(with_entropies=True) == {
        "stats": None, "t_mean": 0.603704, "t_min": 0.598765, "t_max": 0.612346,
        "entropies": [0.0, 1.5]}
    rec = {"problem_id": "p", "sample": 0, "hapo": trace.summary(with_entropies=True)}
    assert recorded_entropies(rec, where="run.jsonl") == [0.0, 1.5]  # zero is an entropy


def test_a_trace_without_entropies_picks_the_same_tokens():
    """Frozen statistics keep no entropies at T0 (nothing is made from them): the tokens and
    temperatures are those of a trace that keeps them."""
    from led_local.decoding.hapo import HAPOConfig, HAPOTrace, hapo_pick

    stats = compute_stats(CALIBRATION)
    cfg = HAPOConfig(tau=0.3, stats=stats)
    rows = np.random.default_rng(3).normal(0, 1, (50, 300)) * 3
    kept, lean = HAPOTrace(stats, [], []), HAPOTrace(stats, None, [])
    for i, row in enumerate(rows):
        a = hapo_pick(row, t0=T0, cfg=cfg, trace=kept, rng=np.random.default_rng(i), top_k=20)
        b = hapo_pick(row, t0=T0, cfg=cfg, trace=lean, rng=np.random.default_rng(i), top_k=20)
        assert a == b
    assert kept.temperatures == lean.temperatures and len(kept.entropies) == 50
    assert lean.entropies is None and lean.summary(with_entropies=True)["entropies"] == []


def test_stats_without_entropies_above_the_pivot_clip_every_higher_entropy_to_one():
    """pivot 1: mu is the largest log-entropy, so no z is positive; the positive scale then
    comes from the 1e-8 floor (s_pos = 1e8), and a token above every calibration entropy gets
    h_hat = 1, the full temperature rise, not a rise proportional to its distance."""
    stats = compute_stats([0.1, 0.2, 0.4, 0.8], pivot=1.0)
    assert stats.s_pos == pytest.approx(1e8)
    assert scaled_entropy(0.81, stats) == 1.0
    # without positive z the negative side still scales: the smallest entropy maps to -1
    assert scaled_entropy(0.1, stats) == pytest.approx(-1.0, abs=1e-5)
