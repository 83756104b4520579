"""pass@k estimator, summaries, majority vote, paired bootstrap and the plot (pure numpy)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from led_local.errors import LedError
from led_local.eval.passk import paired_compare, pass_at_k, plot_pass_at_k, summarize


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_hand_computed_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k


def test_agrees_with_comb_formula():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)))


def test_stable_for_large_n():
    for c, k in [(1, 1), (3, 10), (17, 50), (100, 64), (0, 200), (199, 1)]:
        value = pass_at_k(200, c, k)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(float(exact_pass_at_k(200, c, k)), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_invalid_counts_name_the_value(n, c, k):
    with pytest.raises(LedError, match=r"\bc=|\bk="):
        pass_at_k(n, c, k)


def test_summarize_uneven_counts_reports_skipped():
    results = {"p1": [True, False, False, False], "p2": [False, False], "p3": [True] * 4}
    s = summarize(results, ks=[1, 4])
    assert s["n_problems"] == 3
    assert s["samples_per_problem"] == {"min": 2, "max": 4}
    assert s["mean_accuracy"] == pytest.approx((0.25 + 0.0 + 1.0) / 3)
    assert s["pass@1"] == pytest.approx((0.25 + 0.0 + 1.0) / 3)
    assert s["pass@1_n_problems"] == 3
    assert s["pass@4"] == pytest.approx((1.0 + 1.0) / 2)
    assert s["pass@4_n_problems"] == 2
    assert s["skipped"] == {1: [], 4: ["p2"]}
    assert s["pass@4_se"] == pytest.approx(0.0)
    assert s["mean_accuracy_se"] > 0
    uniform = summarize({"a": [True, False], "b": [False, False]}, ks=[8])
    assert uniform["samples_per_problem"] == 2
    assert uniform["pass@8"] is None and uniform["skipped"] == {8: ["a", "b"]}


def test_summarize_rejects_bad_input():
    with pytest.raises(LedError, match="empty"):
        summarize({}, ks=[1])
    with pytest.raises(LedError, match="ks"):
        summarize({"a": [True]}, ks=[0])
    with pytest.raises(LedError, match="'a'"):
        summarize({"a": []}, ks=[1])


def test_majority_vote_tie_goes_to_first_group():
    results = {"tie": [False, True, False, True], "clear": [True, False, True, True]}
    answers = {"tie": ["3", "4", " 3", "4"], "clear": ["7", "8", "7", "7"]}
    s = summarize(results, ks=[1], answers=answers)
    # "tie": groups "3" (first at 0, wrong) and "4" (2 each): "3" wins -> wrong.
    assert s["maj@n"] == pytest.approx(0.5)


def _same_value(a: str, b: str) -> bool:
    return a.replace("1/2", "0.5") == b.replace("1/2", "0.5")


def test_majority_vote_uses_equivalence_and_skips_none():
    results = {"p": [False, False, True, True]}
    answers = {"p": [None, "2", "1/2", "0.5"]}
    # Exact strings: three singleton groups, the first ("2") wins and is wrong.
    assert summarize(results, ks=[1], answers=answers)["maj@n"] == 0.0
    s = summarize(results, ks=[1], answers=answers, equivalent=_same_value)
    assert s["maj@n"] == 1.0
    assert summarize({"p": [False]}, ks=[1], answers={"p": [None]})["maj@n"] == 0.0


def _runs():
    a = {f"p{i}": [i % 3 == 0, False, i % 2 == 0, False] for i in range(30)}
    b = {f"p{i}": [i % 3 == 0, True, i % 5 == 0, False] for i in range(30)}
    a["only_a"], b["only_b1"], b["only_b2"] = [True], [True], [False]
    return a, b


def test_paired_bootstrap_reproducible_and_contains_estimate():
    a, b = _runs()
    first = paired_compare(a, b, ks=[1, 2, 4], n_boot=500, seed=7)
    again = paired_compare(a, b, ks=[1, 2, 4], n_boot=500, seed=7)
    assert first == again
    assert (first["n_common"], first["n_only_a"], first["n_only_b"]) == (30, 1, 2)
    for k in (1, 2, 4):
        row = first["per_k"][k]
        assert row["n_problems"] == 30
        assert row["diff"] == pytest.approx(row["pass@k_b"] - row["pass@k_a"])
        assert row["ci_low"] <= row["diff"] <= row["ci_high"]
    assert first["per_k"][1]["ci_low"] > 0  # B is right on every second sample
    other_seed = paired_compare(a, b, ks=[1], n_boot=500, seed=8)["per_k"][1]
    assert other_seed["diff"] == first["per_k"][1]["diff"]


def test_paired_compare_k_larger_than_samples():
    a, b = _runs()
    row = paired_compare(a, b, ks=[8])["per_k"][8]
    assert row["n_problems"] == 0 and row["diff"] is None


def test_plot_writes_png(tmp_path):
    path = tmp_path / "passk.png"
    plot_pass_at_k({"led": {1: 0.3, 2: 0.45, 4: 0.6}, "base": {1: 0.3, 2: 0.4, 4: None}}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(LedError, match="cannot write"):
        plot_pass_at_k({"led": {1: 0.3}}, tmp_path / "missing" / "x.png")
