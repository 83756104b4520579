"""RepExp selection (led_local.eval.select) against the exact oracle of docs/REPEXP.md, a
literal m x m Sherman-Morrison implementation, and the projection's construction."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from led_local.errors import LedError
from led_local.eval.passk import pass_at_k
from led_local.eval.select import (
    decode_embedding,
    evaluate_pool,
    first_correct,
    greedy_orders,
    prepare,
    sparse_projection,
)

# six already-projected features (N = 6, m = 3); 1 is a near-duplicate of 0
H = np.array([[4, 0, 0], [3.8, 0.2, 0], [0, 3, 0], [0, 0, 2], [-4, 0.5, 0], [0, -3, 1]], float)
ORDERS = [[0, 5, 4, 3, 2, 1], [1, 5, 4, 3, 2, 0], [2, 4, 3, 5, 0, 1],
          [3, 4, 5, 2, 0, 1], [4, 5, 3, 2, 0, 1], [5, 4, 3, 2, 0, 1]]
BONUSES = [[11.598056, 10.041276, 2.968791, 1.502969, 0.774099, 0.339503],
           [10.284722, 9.804086, 3.24113, 1.547674, 0.782138, 0.398661],
           [8.964722, 20.018036, 2.335557, 1.17191, 0.615649, 0.339503],
           [2.664722, 20.615402, 9.721698, 0.786485, 0.615649, 0.339503],
           [21.864722, 10.267661, 2.296615, 0.786485, 0.615649, 0.339503],
           [10.364722, 21.669445, 2.296615, 0.786485, 0.615649, 0.339503]]


def literal_order(g: np.ndarray, first: int, lam: float) -> tuple[list[int], list[float]]:
    """Algorithm 1 as written: an m x m inverse covariance, Sherman-Morrison per pick."""
    n, m = g.shape
    inv = np.eye(m) / lam
    order, bonus = [first], [float(g[first] @ inv @ g[first])]
    while len(order) < n:
        u = g[order[-1]]
        w = inv @ u
        inv = inv - np.outer(w, w) / (1.0 + u @ w)
        b = np.einsum("ij,jk,ik->i", g, inv, g)
        b[order] = -np.inf
        order.append(int(np.argmax(b)))
        bonus.append(float(b[order[-1]]))
    return order, bonus


def test_centring_uses_the_pool_mean():
    g = prepare(H, dim=0)
    np.testing.assert_allclose(H.mean(axis=0), [0.633333, 0.116667, 0.5], atol=1e-6)
    np.testing.assert_allclose(g, H - H.mean(axis=0))


def test_oracle_orders_and_bonuses_for_every_first_pick():
    orders, bonuses = greedy_orders(prepare(H, dim=0), lam=1.0)
    assert orders.tolist() == ORDERS
    np.testing.assert_allclose(bonuses, BONUSES, atol=1e-6)


def test_forced_single_first_pick_and_short_budget():
    orders, bonuses = greedy_orders(prepare(H, dim=0), firsts=[3], k=3)
    assert orders.tolist() == [[3, 4, 5]]
    np.testing.assert_allclose(bonuses[0], BONUSES[3][:3], atol=1e-6)


def test_negative_controls_no_centring_and_rl_lambda():
    assert greedy_orders(H, firsts=[0])[0].tolist() == [[0, 5, 3, 2, 4, 1]]
    assert greedy_orders(prepare(H, dim=0), lam=0.01, firsts=[0])[0].tolist() == \
        [[0, 5, 3, 4, 2, 1]]


def test_near_duplicates_come_last():
    for order in greedy_orders(prepare(H, dim=0))[0].tolist():
        assert order[-1] == (0 if order[0] == 1 else 1)


def test_samples_to_correct_and_pass_at_k_oracle():
    correct = np.array([False, False, False, True, False, False])
    orders, _ = greedy_orders(prepare(H, dim=0))
    assert first_correct(orders, correct).tolist() == [4, 4, 3, 1, 3, 3]
    out = evaluate_pool(H, correct, dim=0)
    assert out["samples_to_correct_repexp"] == pytest.approx(3.0)
    assert out["samples_to_correct_random"] == pytest.approx(3.5)
    np.testing.assert_allclose(out["pass_at_k_repexp"], [1 / 6, 1 / 6, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose([pass_at_k(6, 1, k) for k in range(1, 7)],
                               [1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6, 1])


def test_pools_without_or_with_only_correct_answers():
    none = evaluate_pool(H, np.zeros(6, bool), dim=0)
    assert none["samples_to_correct_repexp"] == none["samples_to_correct_random"] == 7
    assert not none["pass_at_k_repexp"].any()
    every = evaluate_pool(H, np.ones(6, bool), dim=0)
    assert every["samples_to_correct_repexp"] == every["samples_to_correct_random"] == 1


@pytest.mark.parametrize("lam", [1.0, 0.01])
def test_pool_form_equals_the_literal_sherman_morrison(lam):
    rng = np.random.default_rng(4)
    g = prepare(rng.normal(size=(24, 40)) + rng.normal(size=40), dim=16, rng=rng)
    orders, bonuses = greedy_orders(g, lam=lam)
    for f in range(24):
        order, bonus = literal_order(g, f, lam)
        assert orders[f].tolist() == order
        np.testing.assert_allclose(bonuses[f], bonus, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("d", "value"), [(576, 0.21650635), (640, 0.222285)])
def test_projection_construction(d, value):
    r = sparse_projection(d, 512, np.random.default_rng(0))
    assert r.shape == (512, d)
    nonzero = r[r != 0]
    np.testing.assert_allclose(np.abs(nonzero), np.sqrt(np.sqrt(d) / 512))
    np.testing.assert_allclose(np.abs(nonzero), value, atol=1e-6)
    density = nonzero.size / r.size
    assert abs(density - 1 / np.sqrt(d)) < 4 * np.sqrt(density / r.size)  # binomial, 4 sigma
    assert abs(np.mean(nonzero > 0) - 0.5) < 4 * 0.5 / np.sqrt(nonzero.size)
    gram = r.T @ r  # E[R^T R] = I_d
    assert abs(np.mean(np.diag(gram)) - 1) < 0.02
    assert abs(np.mean(gram[~np.eye(d, dtype=bool)])) < 0.01


def test_projection_is_seeded_and_applied_before_centring():
    feats = np.random.default_rng(1).normal(size=(5, 576)).astype(np.float32)
    a = prepare(feats, dim=512, rng=np.random.default_rng(9))
    b = prepare(feats, dim=512, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    r = sparse_projection(576, 512, np.random.default_rng(9))
    g = feats.astype(np.float64) @ r.T
    np.testing.assert_allclose(a, g - g.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(a.sum(axis=0), 0, atol=1e-9)


def test_embedding_round_trip_and_bad_inputs():
    v = np.array([1.5, -2.25, 3e-8], np.float32)
    text = base64.b64encode(v.astype("<f4").tobytes()).decode()
    np.testing.assert_array_equal(decode_embedding(text, 3), v)
    with pytest.raises(LedError, match="embedding_dim"):
        decode_embedding(text, 4)
    with pytest.raises(LedError, match="lambda must be"):
        greedy_orders(H, lam=0.0)
    with pytest.raises(LedError, match="dim must be"):
        prepare(H, dim=-1)


def test_ties_go_to_the_lowest_index():
    """Orthogonal unit features: after any first pick every other answer has the same bonus,
    bit for bit, so the order is the remaining indices in increasing order."""
    orders, bonuses = greedy_orders(np.eye(5), lam=2.0)
    for first in range(5):
        assert orders[first].tolist() == [first] + [i for i in range(5) if i != first]
    np.testing.assert_array_equal(bonuses, np.full((5, 5), 0.5))
    # a tie that appears later: 3 and 1 tie after 0 and 2 are chosen
    g = np.array([[1.0, 0, 0], [0, 1.0, 0], [2.0, 0, 0], [0, 1.0, 0]])
    assert greedy_orders(g, lam=1.0, firsts=[2])[0][0].tolist() == [2, 1, 3, 0]


def test_first_correct_is_one_based_and_n_plus_1_without_a_hit():
    orders = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    correct = np.array([False, False, True])
    assert first_correct(orders, correct).tolist() == [1, 2, 3]
    assert first_correct(orders, np.zeros(3, bool)).tolist() == [4, 4, 4]


def test_smallest_sizes_are_valid_and_empty_ones_refused():
    rng = np.random.default_rng(0)
    assert sparse_projection(1, 1, rng).shape == (1, 1)
    for d, m in ((0, 3), (3, 0)):
        with pytest.raises(LedError, match="projection sizes"):
            sparse_projection(d, m, rng)
    assert prepare(np.ones((1, 4)), dim=1, rng=rng).shape == (1, 1)  # dim 1 projects
    assert prepare(np.arange(8.0).reshape(2, 4), dim=0).shape == (2, 4)
    for bad in (np.ones(4), np.ones((0, 4)), np.ones((2, 2, 2))):
        with pytest.raises(LedError, match="non-empty"):
            prepare(bad, dim=0)
    orders, bonuses = greedy_orders(np.eye(3), k=1)
    assert orders.tolist() == [[0], [1], [2]] and bonuses.shape == (3, 1)
