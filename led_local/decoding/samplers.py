"""Pure numpy samplers: Latent Exploration Decoding, exactly as docs/LED.md states it.

Everything here works on arrays of logits and an explicit ``np.random.Generator``; nothing
knows about llama.cpp, tokenizers or global random state. Depth 0 is always the model's
ordinary (final-layer) logits, depth j >= 1 the LM-head projection of a shallower state.

Random draws per decode step and row happen in one fixed order, so seeded runs reproduce:
base token (only when T > 0), then the gate (only in scope with ``exploit`` on), then the
exploration token (only when exploring and T > 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from led_local.errors import ConfigError

PROB_FLOOR = 1e-6  # LED.md step 4: A[j, c] = max(P_j[C_c], 1e-6)
LOG_CLIP = 1e-9  # LED.md step 6: clip inside the log of the entropy


@dataclass(frozen=True)
class LEDConfig:
    """LED's parameters; the defaults are the reference's (T 0.6, d 8, k 8, exploit on).

    ``norm`` applies the model's final norm before projecting depths >= 1 (reference ``ln``);
    it is carried here so that one object describes a run, the projection honours it.
    """

    temperature: float = 0.6
    depths: int = 8
    candidates: int = 8
    exploit: bool = True
    norm: bool = False

    def __post_init__(self) -> None:
        from led_local.decoding import led  # the options are declared by the method
        from led_local.decoding.options import TEMPERATURE

        TEMPERATURE.check(self.temperature)
        led.DEPTHS.check(self.depths)
        led.CANDIDATES.check(self.candidates)


class BaseStep(NamedTuple):
    """The final layer's part of one LED step (LED.md steps 1-3 and the gate of step 8)."""

    candidates: np.ndarray  # (k,) int64 token ids, most probable first (ties: lower id first)
    q: np.ndarray  # (k,) float64: P_0 at the candidates, not renormalised
    base: int  # the base token b
    explore: bool  # whether this step emits the exploration token instead of b


class ExploreStep(NamedTuple):
    """The exploration part of one LED step (LED.md steps 4-7)."""

    token: int  # the exploration token e
    depth: int  # j*, the chosen depth index
    posteriors: np.ndarray  # (d, k) S_j, each row summing to 1
    entropies: np.ndarray  # (d,) H_j


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def log_probs_at(logits: np.ndarray, tokens: np.ndarray, temperature: float) -> np.ndarray:
    """log softmax(logits / T) over the full vocabulary, read at ``tokens``.

    logits: (..., V); tokens: (k,) ids. Returns (..., k) float64. Only the normaliser needs the
    whole row, so the full softmax is never materialised in float64. T = 0 means no division.
    """
    z = np.asarray(logits, dtype=np.float32)
    scale = 1.0 / temperature if temperature > 0 else 1.0
    zmax = z.max(axis=-1, keepdims=True)
    shifted = np.exp((z - zmax) * np.float32(scale))
    lse = np.log(shifted.sum(axis=-1, keepdims=True, dtype=np.float64))
    return (z[..., tokens] - zmax).astype(np.float64) * scale - lse


def probs_at(logits: np.ndarray, tokens: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) read at ``tokens``: (..., V) -> (..., k) float64."""
    return np.exp(log_probs_at(logits, tokens, temperature))


def _sampled_floor(z: np.ndarray, k: int) -> float:
    """A value at most the k-th largest of the row z (V,) with few values at or above it: the
    k-th largest of an evenly strided sample of about 128 k values, at most a quarter of the
    row (n > 64 k). About n / 128 values of the row pass it, whatever their distribution (a
    rank in the sample); masking and gathering those costs far more per value than the
    sample's selection when many pass (16 k values: 150 us of 200 on a 49k row)."""
    sample = z[:: max(4, z.shape[-1] // (128 * k))]
    return sample[np.argpartition(sample, len(sample) - k)[len(sample) - k]]


def kth_largest(z: np.ndarray, k: int) -> float:
    """The k-th largest value of the row z (V,) (1 <= k <= V), as ``np.partition`` gives it,
    found among the values at or above ``_sampled_floor`` on a large row (tens of
    microseconds instead of hundreds on a 50k vocabulary)."""
    n = z.shape[-1]
    if n > 64 * k:
        z = z[z >= _sampled_floor(z, k)]
        n = z.shape[-1]
    return np.partition(z, n - k)[n - k]


def top_candidates(final_logits: np.ndarray, k: int) -> np.ndarray:
    """The k most probable token ids of one row (V,), most probable first, ties by lower id.

    On a large row the selection runs on the values at or above the k-th largest of an
    evenly strided sample (``_sampled_floor``): that threshold is at most the row's k-th
    largest value, so the k largest values and every value tied with the k-th are all kept,
    in index order, and the result is the whole row's, at a fraction of a full selection's
    cost (tens of microseconds instead of hundreds on a 50k vocabulary)."""
    z = np.asarray(final_logits)
    n = z.shape[-1]
    if not 1 <= k <= n:
        raise ConfigError(
            "led_candidates", f"must be between 1 and the vocabulary {n}, got {k}"
        )
    if k == n:
        idx = np.arange(n)
        return idx[np.lexsort((idx, -z[idx]))].astype(np.int64)
    sub = np.arange(n) if n <= 64 * k else np.flatnonzero(z >= _sampled_floor(z, k))
    zs = z[sub]
    if k < len(sub):
        kth = zs[np.argpartition(-zs, k - 1)[k - 1]]  # the k-th largest value
        above = np.flatnonzero(zs > kth)
        pos = np.concatenate([above, np.flatnonzero(zs == kth)[: k - len(above)]])
    else:
        pos = np.arange(len(sub))
    idx = sub[pos]
    return idx[np.lexsort((idx, -z[idx]))].astype(np.int64)


def allowed(final_logits: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The ``candidates`` whose final logit is finite: a grammar masks the tokens it forbids
    with -inf (docs/LED.md, "Constrained output"); unconstrained logits keep them all."""
    z = np.asarray(final_logits)[candidates]
    keep = np.isfinite(z)
    return candidates if keep.all() or not keep.any() else candidates[keep]


def draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn proportionally to non-negative ``weights`` (need not sum to 1)."""
    cdf = np.cumsum(weights, dtype=np.float64)
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), len(cdf) - 1))


def led_base(
    final_logits: np.ndarray,
    *,
    temperature: float,
    k: int,
    exploit: bool,
    in_scope: bool,
    rng: np.random.Generator,
) -> BaseStep:
    """LED.md steps 1-3 and the gate of step 8, from the final layer alone.

    final_logits: (V,). Greedy (T = 0) takes the argmax candidate; the gate is still drawn.
    Out of scope the step never explores and draws no gate.
    """
    _check_rng(rng)
    cand = allowed(final_logits, top_candidates(final_logits, k))
    q = probs_at(final_logits, cand, temperature)
    b = int(cand[draw(q, rng)]) if temperature > 0 else int(cand[0])
    if not in_scope:
        explore = False
    elif exploit:
        explore = bool(rng.random() < 1.0 - q.max())
    else:
        explore = True
    return BaseStep(cand, q, b, explore)


def depth_posteriors(
    logits: np.ndarray, candidates: np.ndarray, *, temperature: float
) -> np.ndarray:
    """Cumulative depth posteriors S (LED.md steps 1, 4, 5).

    logits: (d, V) with depth 0 the final layer; candidates: (k,). Returns (d, k) float64,
    row j = normalised sum of the clipped candidate probabilities of depths 0..j.
    """
    return posteriors_from_logprobs(log_probs_at(logits, candidates, temperature))


def posteriors_from_logprobs(logprobs: np.ndarray) -> np.ndarray:
    """Cumulative depth posteriors S from log P_j at the candidates, (d, k) -> (d, k) float64."""
    a = np.maximum(np.exp(logprobs), PROB_FLOOR)
    s = np.cumsum(a, axis=0)
    return s / s.sum(axis=1, keepdims=True)


def depth_entropies(posteriors: np.ndarray) -> np.ndarray:
    """H_j = -sum_c S_j[c] log(clip(S_j[c], 1e-9)) for posteriors (d, k); returns (d,)."""
    return -(posteriors * np.log(np.maximum(posteriors, LOG_CLIP))).sum(axis=1)


def led_explore(
    logits: np.ndarray,
    candidates: np.ndarray,
    *,
    temperature: float,
    rng: np.random.Generator,
) -> ExploreStep:
    """LED.md steps 4-7: the maximal-entropy depth and the exploration token drawn from it.

    logits: (d, V), depth 0 the final layer; candidates: (k,) from ``led_base``.
    """
    return led_explore_logprobs(log_probs_at(logits, candidates, temperature), candidates,
                                temperature=temperature, rng=rng)


def led_explore_logprobs(
    logprobs: np.ndarray,
    candidates: np.ndarray,
    *,
    temperature: float,
    rng: np.random.Generator,
) -> ExploreStep:
    """``led_explore`` from log P_j at the candidates alone, (d, k) float64: what the in-graph
    projection returns instead of whole rows of logits."""
    _check_rng(rng)
    s = posteriors_from_logprobs(logprobs)
    h = depth_entropies(s)
    j = int(np.argmax(h))  # first index of the maximum
    e = draw(s[j], rng) if temperature > 0 else int(np.argmax(s[j]))
    return ExploreStep(int(candidates[e]), j, s, h)


class LEDResult(NamedTuple):
    """Per-row outcome of one batched LED step."""

    tokens: np.ndarray  # (rows,) int64 emitted tokens
    explored: np.ndarray  # (rows,) bool
    depths: np.ndarray  # (rows,) int64 chosen depth, -1 where not explored


def led_sample(
    logits: np.ndarray,
    *,
    config: LEDConfig,
    rngs: list[np.random.Generator],
    in_scope: np.ndarray | None = None,
) -> LEDResult:
    """One LED step for every row of ``logits`` (rows, d, V), each row with its own generator.

    in_scope: (rows,) bool, default all True (still thinking). Row r's result depends only on
    logits[r] and rngs[r], so a sequence decodes the same whatever shares its batch.
    """
    z = np.asarray(logits)
    if z.ndim != 3 or z.shape[1] != config.depths:
        raise ValueError(f"logits must be (rows, {config.depths}, V), got shape {z.shape}")
    if len(rngs) != z.shape[0]:
        raise ValueError(f"need one generator per row: {z.shape[0]} rows, {len(rngs)} generators")
    scope = np.ones(z.shape[0], bool) if in_scope is None else np.asarray(in_scope, bool)
    if scope.shape != (z.shape[0],):
        raise ValueError(f"in_scope must have one flag per row ({z.shape[0]}), got {scope.shape}")
    tokens = np.empty(z.shape[0], np.int64)
    depths = np.full(z.shape[0], -1, np.int64)
    for r, rng in enumerate(rngs):
        base = led_base(
            z[r, 0], temperature=config.temperature, k=config.candidates,
            exploit=config.exploit, in_scope=bool(scope[r]), rng=rng,
        )
        tokens[r] = base.base
        if base.explore:
            step = led_explore(z[r], base.candidates, temperature=config.temperature, rng=rng)
            tokens[r], depths[r] = step.token, step.depth
    return LEDResult(tokens, depths >= 0, depths)


def token_logprob(final_logits: np.ndarray, token: int, *, temperature: float) -> float:
    """log softmax(Z_0 / T) at ``token``: the log-probability RL rollouts report (LED.md)."""
    v = np.shape(final_logits)[-1]
    if not 0 <= token < v:
        raise ValueError(f"token must be in [0, {v}), got {token}")
    return float(log_probs_at(final_logits, np.array([token]), temperature)[0])
