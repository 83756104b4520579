"""The truncation filters of led_local/decoding/filters.py at their boundaries, on
distributions whose probabilities are exact in binary (equal logits: 1/4 each), so that the
two engines' conventions (vLLM keeps a token while the mass above it is < p, Hugging Face
while it is <= p) give different, exactly known survivors."""

from __future__ import annotations

import numpy as np
import pytest

from led_local.decoding.filters import filtered_probs, sample_token

EQUAL4 = np.zeros(4, np.float32)  # p = 1/4 each; the mass above token i is exactly i/4


@pytest.mark.parametrize(("top_p", "vllm", "hf"), [
    (0.25, 1, 2),  # above token 1: 0.25, not < 0.25 but <= 0.25
    (0.5, 2, 3),
    (0.75, 3, 4),
    (0.2500001, 2, 2),
    (0.2499999, 1, 1),
])
def test_top_p_boundary_in_both_conventions(top_p, vllm, hf):
    for convention, n in (("vllm", vllm), ("hf", hf)):
        idx, p = filtered_probs(EQUAL4, temperature=1.0, top_p=top_p, convention=convention)
        assert idx.tolist() == list(range(n)), convention  # ties: lower ids first
        assert p.tolist() == [1.0 / n] * n


def test_top_p_keeps_at_least_one_token():
    z = np.array([5.0, 0.0, 0.0], np.float32)
    for convention in ("vllm", "hf"):
        idx, p = filtered_probs(z, temperature=1.0, top_p=1e-9, convention=convention)
        assert idx.tolist() == [0] and p.tolist() == [1.0]


@pytest.mark.parametrize("convention", ["vllm", "hf"])
def test_top_k_keeps_every_token_tied_with_the_kth(convention):
    z = np.array([3.0, 1.0, 2.0, 2.0, 0.0], np.float32)
    idx, p = filtered_probs(z, temperature=0.5, top_k=2, convention=convention)
    assert idx.tolist() == [0, 2, 3]
    e = np.exp((np.array([3.0, 2.0, 2.0]) - 3.0) / 0.5)
    np.testing.assert_allclose(p, e / e.sum(), rtol=1e-12)


def test_min_p_relative_in_vllm_absolute_in_hf():
    # p = (0.5, 0.25, 0.125, 0.125): vLLM keeps p >= min_p * 0.5, HF p >= min_p
    z = np.log(np.array([4.0, 2.0, 1.0, 1.0]))
    idx, _ = filtered_probs(z, temperature=1.0, min_p=0.3, convention="vllm")
    assert idx.tolist() == [0, 1]  # the threshold is 0.3 x 0.5 = 0.15
    idx, _ = filtered_probs(z, temperature=1.0, min_p=0.3, convention="hf")
    assert idx.tolist() == [0]


def test_temperature_divides_before_the_filters():
    # at T = 0.5 the mass of token 0 is e^2 / (e^2 + 1) = 0.88 < 0.9: top-p 0.9 keeps both;
    # at T = 0.25 it is 0.98: only token 0 survives
    z = np.array([1.0, 0.0], np.float32)
    assert filtered_probs(z, temperature=0.5, top_p=0.9)[0].tolist() == [0, 1]
    assert filtered_probs(z, temperature=0.25, top_p=0.9)[0].tolist() == [0]


def test_sample_token_is_an_inverse_cdf_draw_over_the_survivors():
    z = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    idx, p = filtered_probs(z, temperature=0.7, top_k=3, convention="hf")
    for seed in range(100):
        u = np.random.default_rng(seed).random()
        want = idx[min(int(np.searchsorted(np.cumsum(p), u * p.sum(), side="right")),
                       len(p) - 1)]
        got = sample_token(z, temperature=0.7, top_k=3, rng=np.random.default_rng(seed),
                           convention="hf")
        assert got == want


# -- what mutation testing found untested (bench/mutate.py) ---------------------------------

def test_vllm_min_p_reads_the_tempered_distribution():
    # at T = 0.5, p is proportional to (16, 4, 1, 1): min-p 0.2 keeps p >= 0.2 x 16/22
    z = np.log(np.array([4.0, 2.0, 1.0, 1.0]))
    idx, p = filtered_probs(z, temperature=0.5, min_p=0.2, convention="vllm")
    assert idx.tolist() == [0, 1]
    np.testing.assert_allclose(p, [0.8, 0.2], rtol=1e-12)


@pytest.mark.parametrize("convention", ["vllm", "hf"])
def test_top_k_of_one_keeps_only_the_top_token(convention):
    z = np.array([1.0, 3.0, 2.0], np.float32)
    assert filtered_probs(z, temperature=1.0, top_k=1, convention=convention)[0].tolist() == [1]


@pytest.mark.parametrize("convention", ["vllm", "hf"])
def test_top_p_of_one_keeps_a_token_whose_mass_rounds_away(convention):
    # the mass above token 1 rounds to exactly 1.0 in float64: top-p 1 must still keep it
    z = np.array([0.0, -50.0])
    idx, p = filtered_probs(z, temperature=1.0, top_p=1.0, convention=convention)
    assert idx.tolist() == [0, 1] and p[1] > 0


@pytest.mark.parametrize(("convention", "min_p"), [("hf", 0.25), ("vllm", 0.5)])
def test_min_p_keeps_a_token_exactly_at_the_threshold(convention, min_p):
    # p = (0.5, 0.25, 0.25) exactly; the threshold is 0.25 (absolute) or 0.5 x 0.5 (relative)
    z = np.log(np.array([2.0, 1.0, 1.0]))
    idx, p = filtered_probs(z, temperature=1.0, min_p=min_p, convention=convention)
    assert idx.tolist() == [0, 1, 2] and p.tolist() == [0.5, 0.25, 0.25]


def test_defaults_are_vllm_and_no_floor():
    from led_local.decoding.filters import entropy_rows, softmax_rows

    z = np.zeros(4, np.float32)  # mass above token 2 is 0.5: vLLM keeps 2 tokens, HF 3
    for seed in range(50):
        want = sample_token(z, temperature=1.0, top_p=0.5, rng=np.random.default_rng(seed),
                            convention="vllm")
        assert sample_token(z, temperature=1.0, top_p=0.5,
                            rng=np.random.default_rng(seed)) == want
    assert filtered_probs(z, temperature=1.0, top_p=0.5)[0].tolist() == [0, 1]
    p, logp = softmax_rows(np.array([0.0, -40.0]))
    assert entropy_rows(p, logp) == pytest.approx(-(p * logp).sum(), rel=1e-15)
    assert entropy_rows(p, logp) != entropy_rows(p, logp, floor=1.0)


def test_vllm_top_k_applies_to_the_min_p_survivors():
    # min-p 0.4 keeps p >= 0.2 (tokens 0 and 1); a top-k of 3 then has nothing left to cut
    z = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    for dtype in (np.float64, np.float32):
        idx, p = filtered_probs(z.astype(dtype), temperature=1.0, min_p=0.4, top_k=3)
        assert idx.tolist() == [0, 1]
        np.testing.assert_allclose(p, [0.625, 0.375], rtol=1e-6)


def test_float64_logits_with_top_k_are_divided_by_the_temperature():
    z = np.array([2.0, 1.0, 0.0, -1.0])
    idx, p = filtered_probs(z, temperature=0.5, top_k=2, convention="hf")
    assert idx.tolist() == [0, 1]
    np.testing.assert_allclose(p, [np.e ** 2 / (np.e ** 2 + 1), 1 / (np.e ** 2 + 1)],
                               rtol=1e-12)


def test_entropy_rows_ignore_impossible_tokens():
    from led_local.decoding.filters import entropy_rows, softmax_rows

    p, logp = softmax_rows(np.array([[0.0, 0.0, -np.inf]]))
    assert entropy_rows(p, logp).tolist() == [pytest.approx(np.log(2), rel=1e-15)]


def _spread_logits(n: int = 400, seed: int = 5) -> np.ndarray:
    """Float32 logits with a wide spread and a few ties: no filter leaves them whole."""
    z = np.random.default_rng(seed).normal(0.0, 3.0, n).astype(np.float32)
    z[10:13] = z[7]
    return z


@pytest.mark.parametrize(("top_k", "top_p", "min_p"), [
    (0, 1.0, 0.0), (400, 1.0, 0.0), (1000, 1.0, 0.0),  # the unfiltered fast path
    (5, 1.0, 0.0), (0, 0.9, 0.0), (0, 1.0, 0.05),  # one filter each: the filtered path
    (5, 0.9, 0.0), (399, 1.0, 0.0), (20, 0.95, 0.05), (1, 1.0, 0.0),
])
def test_sample_token_is_filtered_probs_then_draw_for_every_filter(top_k, top_p, min_p):
    """sample_token's unfiltered shortcut and its filtered path both give exactly the token
    of filtered_probs + draw for the same generator: a filter the shortcut skipped, or an
    unfiltered row sent the long way with a different draw, changes some of 300 tokens."""
    from led_local.decoding.samplers import draw

    z = _spread_logits()
    for seed in range(300):
        got = sample_token(z, temperature=0.7, rng=np.random.default_rng(seed), top_k=top_k,
                           top_p=top_p, min_p=min_p)
        idx, p = filtered_probs(z, temperature=0.7, top_k=top_k, top_p=top_p, min_p=min_p)
        assert got == int(idx[draw(p, np.random.default_rng(seed))]), seed
    if top_k == 5:  # and the filter was applied: only the top 5 are ever drawn
        top5 = set(np.argsort(-z, kind="stable")[:5].tolist())
        picks = {sample_token(z, temperature=5.0, rng=np.random.default_rng(s), top_k=5)
                 for s in range(300)}
        assert picks <= top5


def test_entropy_with_a_floor_clips_inside_the_log():
    """SwiReasoning's entropy (floor 1e-12): -sum p ln max(p, floor), positive; a p below the
    floor is weighted by ln(floor), a zero adds nothing."""
    from led_local.decoding.filters import entropy

    p = np.array([0.5, 0.25, 0.25 - 1e-14, 1e-14, 0.0])
    want = -(0.5 * np.log(0.5) + 0.25 * np.log(0.25) + (0.25 - 1e-14) * np.log(0.25 - 1e-14)
             + 1e-14 * np.log(1e-12))
    assert entropy(p, floor=1e-12) == pytest.approx(want, rel=1e-15)
    assert entropy(p, floor=1e-12) > 0
    # the floor changes the result where a p is under it (ln 1e-14 against ln 1e-12)
    assert entropy(p, floor=1e-12) != entropy(p)
    assert entropy(np.array([0.5, 0.5]), floor=0.9) == pytest.approx(-np.log(0.9))
