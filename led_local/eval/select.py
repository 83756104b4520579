"""RepExp test-time selection: which of N pooled answers to verify first (pure numpy).

Each answer is summarised by its feature (the mean final-norm hidden state over its tokens,
recorded by ``solve --embed``). The features of one prompt's pool are mapped by a very sparse
random projection, centred over the pool, and answers are then chosen greedily: after a uniform
first pick, always the not yet chosen answer with the largest elliptical bonus
``g_i^T L_t g_i``, where ``L_t`` is the inverse of ``lam*I + sum of g g^T over the picks so
far``, kept up to date by Sherman-Morrison rank-one updates in float64. See docs/REPEXP.md.

The update is carried on the pool's N x N matrix ``Q_t = G L_t G^T`` rather than on the m x m
``L_t``: with ``u = g_p`` the last pick and ``w = L u``, Sherman-Morrison gives
``L' = L - w w^T / (1 + u^T w)``, hence ``Q' = Q - Q[:, p] Q[p, :] / (1 + Q[p, p])`` and the
bonus of answer i is ``Q'[i, i]``. It is the same arithmetic restricted to the span of the
pool, O(N^2) per pick instead of O(N m^2), which makes the exact average over all N first
picks affordable.
"""

from __future__ import annotations

import base64

import numpy as np

from led_local.errors import LedError

DEFAULT_DIM = 512
DEFAULT_LAMBDA = 1.0


def check_params(*, dim: int, lam: float) -> None:
    """Refuse a projection size below 0 or a ridge lambda that is not positive."""
    if dim < 0:
        raise LedError(f"`dim` must be >= 0 (0 = no projection), got {dim}")
    if not lam > 0:
        raise LedError(f"`lambda` must be > 0, got {lam}")


def decode_embedding(text: str, dim: int) -> np.ndarray:
    """A stored feature (base64 of little-endian float32, ``dim`` values) as (dim,) float32."""
    vec = np.frombuffer(base64.b64decode(text), "<f4")
    if vec.shape[0] != dim:
        raise LedError(f"embedding has {vec.shape[0]} values, its embedding_dim says {dim}")
    return vec.astype(np.float32)


def sparse_projection(d: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """(m, d) float64 very sparse random projection (Li, Hastie and Church 2006).

    Density s = 1/sqrt(d): each entry is independently 0 with probability 1 - s and
    +-sqrt(1/s)/sqrt(m) (= d**0.25 / sqrt(m)) with probability s/2 each, as scikit-learn's
    ``SparseRandomProjection(m, density="auto")``; a row vector x maps to ``x @ R.T``.
    """
    if d < 1 or m < 1:
        raise LedError(f"projection sizes must be >= 1, got d={d}, m={m}")
    density = 1.0 / np.sqrt(d)
    value = np.sqrt(1.0 / density) / np.sqrt(m)
    nonzero = rng.random((m, d)) < density
    sign = np.where(rng.random((m, d)) < 0.5, -1.0, 1.0)
    return np.where(nonzero, sign * value, 0.0)


def prepare(features: np.ndarray, *, dim: int = DEFAULT_DIM,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """(N, d) features of one pool -> (N, m) float64 projected and centred features.

    dim: m, the projection size (default 512; 0 = no projection, the features as they are);
    rng: the projection's randomness (needed when dim > 0).
    """
    h = np.asarray(features, np.float64)
    if h.ndim != 2 or h.shape[0] < 1:
        raise LedError(f"features must be a non-empty (N, d) array, got shape {h.shape}")
    if dim < 0:
        raise LedError(f"`dim` must be >= 0 (0 = no projection), got {dim}")
    if dim > 0:
        if rng is None:
            raise LedError("a projection needs a random generator")
        h = h @ sparse_projection(h.shape[1], dim, rng).T
    return h - h.mean(axis=0)


def greedy_orders(g: np.ndarray, *, lam: float = DEFAULT_LAMBDA,
                  firsts: np.ndarray | list[int] | None = None,
                  k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy elliptical selection from every first pick in ``firsts`` at once.

    g: (N, m) prepared features; lam: ridge lambda > 0 (default 1.0); firsts: the forced first
    picks (default: all N); k: picks per order (default N). Returns ``orders`` (F, k) int64,
    the indices in the order chosen (without replacement, ties to the lowest index), and
    ``bonuses`` (F, k) float64, each pick's bonus when it was picked (the first one's is
    g^T g / lam).
    """
    g = np.asarray(g, np.float64)
    n = g.shape[0]
    if not lam > 0:
        raise LedError(f"`lambda` must be > 0, got {lam}")
    k = n if k is None else k
    if not 1 <= k <= n:
        raise LedError(f"k must be in [1, {n}], got {k}")
    firsts = np.arange(n) if firsts is None else np.asarray(firsts, np.int64)
    f = firsts.shape[0]
    rows = np.arange(f)
    q = np.broadcast_to(g @ g.T / lam, (f, n, n)).copy()
    chosen = np.zeros((f, n), bool)
    orders = np.empty((f, k), np.int64)
    bonuses = np.empty((f, k), np.float64)
    pick = firsts
    for t in range(k):
        orders[:, t] = pick
        bonuses[:, t] = q[rows, pick, pick]
        chosen[rows, pick] = True
        if t == k - 1:
            break
        col = q[rows, :, pick].copy()  # (F, N): Q[:, p] (Q is symmetric)
        q -= col[:, :, None] * col[:, None, :] / (1.0 + col[rows, pick])[:, None, None]
        bonus = np.where(chosen, -np.inf, np.diagonal(q, axis1=1, axis2=2))
        pick = np.argmax(bonus, axis=1)  # the first maximum: ties to the lowest index
    return orders, bonuses


def first_correct(orders: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(F,) 1-based position of the first correct answer in each order (N+1 when none)."""
    hit = np.asarray(correct, bool)[orders]
    n = np.asarray(correct).shape[0]
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, n + 1)


def evaluate_pool(features: np.ndarray, correct: np.ndarray, *, dim: int = DEFAULT_DIM,
                  lam: float = DEFAULT_LAMBDA,
                  rng: np.random.Generator | None = None) -> dict:
    """RepExp against random selection on one pool, exactly averaged over the N first picks.

    features: (N, d); correct: (N,) bool. Returns ``n``, ``c``; ``samples_to_correct_repexp``
    (mean 1-based position of the first correct answer; N+1 when c = 0),
    ``samples_to_correct_random`` = (N+1)/(c+1); ``pass_at_k_repexp`` (N,) the fraction of
    first picks whose first k answers hold a correct one, k = 1..N.
    """
    check_params(dim=dim, lam=lam)
    correct = np.asarray(correct, bool)
    n, c = correct.shape[0], int(correct.sum())
    if features.shape[0] != n:
        raise LedError(f"{features.shape[0]} features for {n} answers")
    if c in (0, n):  # the selection cannot matter
        positions = np.full(n, n + 1 if c == 0 else 1)
    else:
        orders, _ = greedy_orders(prepare(features, dim=dim, rng=rng), lam=lam)
        positions = first_correct(orders, correct)
    ks = np.arange(1, n + 1)
    return {
        "n": n,
        "c": c,
        "samples_to_correct_repexp": float(positions.mean()),
        "samples_to_correct_random": (n + 1) / (c + 1),
        "pass_at_k_repexp": (positions[None, :] <= ks[:, None]).mean(axis=1),
    }
