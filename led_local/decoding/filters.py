"""Temperature and truncation filters over one row of logits, pure numpy.

Two engines' conventions are needed exactly, and they differ in small ways:

- ``vllm`` (HAPO's sampler): softmax(z / T); min-p relative to the top probability; then top-k
  and top-p on the renormalised survivors; top-p keeps a token while the mass strictly above
  it is < p.
- ``hf`` (SwiReasoning's ``apply_sampling_filter``): z / T; top-k; top-p keeps a token while
  the mass above it is <= p; min-p is an absolute threshold on the filtered softmax.

A filter that is off (top_k = 0, top_p = 1, min_p = 0) costs nothing. T = 0 means argmax.
"""

from __future__ import annotations

import math

import numpy as np

from led_local.decoding.samplers import draw, kth_largest


class Scratch:
    """Reusable float64 work arrays for the per-token samplers. A fresh array the size of
    the vocabulary costs more than the arithmetic on it (the allocator maps and faults in new
    pages every time), so a caller that picks every step keeps one Scratch (one per thread)
    and lends it to them; the values are the same with or without it."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float64 array of ``shape`` (its contents undefined), ``name``'s own."""
        n = math.prod(shape)
        a = self._arrays.get(name)
        if a is None or a.size < n:
            a = self._arrays[name] = np.empty(n, np.float64)
        return a[:n].reshape(shape)


def softmax64(logits: np.ndarray) -> np.ndarray:
    """softmax of a row (V,) in float64, numerically stable."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def softmax_rows(logits: np.ndarray, *, scratch: Scratch | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(p, log p) of softmax over the last axis of logits (..., V), float64, with one exp and
    no log over the vocabulary: log p = (z - max z) - log(sum exp(z - max z)). Elementwise
    and row by row, so a row's values never depend on the other rows. With ``scratch`` the
    two results are its arrays ``p`` and ``logp`` (valid until their next use)."""
    if scratch is None:
        x, e = np.array(logits, dtype=np.float64), np.empty(np.shape(logits))
    else:
        x, e = scratch.array("logp", logits.shape), scratch.array("p", logits.shape)
        x[...] = logits
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=e)
    s = e.sum(axis=-1, keepdims=True)
    e /= s
    x -= np.log(s)
    return e, x


def entropy_rows(p: np.ndarray, logp: np.ndarray, *, floor: float = 0.0) -> np.ndarray:
    """-sum p ln p per row from ``softmax_rows``'s (p, log p) (..., V) -> (...,), in nats;
    ``floor`` clips p inside the log as ``entropy`` does (0: zero entries add nothing)."""
    # (a -inf logit has p = 0 and adds nothing, as in ``entropy``, not 0 * -inf)
    logp = np.maximum(logp, np.log(floor) if floor > 0 else np.finfo(np.float64).min)
    return -(p * logp).sum(axis=-1)


def entropy(p: np.ndarray, *, floor: float = 0.0) -> float:
    """-sum p ln p of a probability row, in nats; ``floor`` clips p inside the log
    (SwiReasoning uses 1e-12; 0 drops zero entries, the limit p ln p -> 0)."""
    p = np.asarray(p, dtype=np.float64)
    if floor > 0:
        return float(-(p * np.log(np.maximum(p, floor))).sum())
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def _top_k_mask(z: np.ndarray, k: int) -> np.ndarray:
    """Logits >= the k-th largest (ties kept, as torch.topk thresholds are)."""
    if k <= 0 or k >= z.shape[-1]:
        return np.ones(z.shape, bool)
    return z >= kth_largest(z, k)


def filtered_probs(
    logits: np.ndarray,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    convention: str = "vllm",
) -> tuple[np.ndarray, np.ndarray]:
    """The sampling distribution after temperature and filters, as (token ids, probs) of the
    survivors (probs float64 summing to 1). logits: (V,); temperature > 0."""
    raw = np.asarray(logits)
    if convention == "vllm" and min_p > 0:
        z = raw.astype(np.float64) / temperature
        p = softmax64(z)
        idx = np.flatnonzero(p >= min_p * p.max())
        z = z[idx]
    else:
        idx, z = None, None
    if 0 < top_k < (raw.shape[-1] if idx is None else idx.size):
        if idx is None and raw.dtype.itemsize < 8:
            # the top k of float32 logits are those of z = logits / T (a division by T > 0 in
            # float64 keeps distinct float32 logits distinct and in order), found without
            # dividing the whole vocabulary; z is then made for the survivors only
            idx = np.flatnonzero(_top_k_mask(raw, top_k))
            z = raw[idx].astype(np.float64) / temperature
        else:
            if idx is None:
                z = raw.astype(np.float64) / temperature
                idx = np.arange(z.shape[-1])
            keep = np.flatnonzero(_top_k_mask(z, top_k))
            z, idx = z[keep], idx[keep]
    if idx is None:  # (a filter that is off copies nothing)
        z = raw.astype(np.float64) / temperature
        idx = np.arange(z.shape[-1])
    if top_p < 1:
        order = np.argsort(-z, kind="stable")
        p = softmax64(z[order])
        before = np.concatenate([[0.0], np.cumsum(p)[:-1]])
        n = int((before < top_p).sum() if convention == "vllm" else (before <= top_p).sum())
        sel = np.sort(order[: max(1, n)])
        z, idx = z[sel], idx[sel]
    p = softmax64(z)
    if convention == "hf" and min_p > 0:
        keep = p >= min_p
        if keep.any():
            z, idx = z[keep], idx[keep]
            p = softmax64(z)
    return idx, p


def sample_token(
    logits: np.ndarray,
    *,
    temperature: float,
    rng: np.random.Generator,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    convention: str = "vllm",
    scratch: Scratch | None = None,
) -> int:
    """One token: argmax when T = 0 (no draw), else an inverse-CDF draw from ``rng`` over the
    filtered distribution (exactly one ``rng.random()`` per call). ``scratch``: work arrays
    to borrow (the result is the same without)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    n = logits.shape[-1]
    if (top_k <= 0 or top_k >= n) and top_p >= 1 and min_p <= 0:
        # no filter: filtered_probs' softmax and draw's CDF, value for value, in one array
        x = np.empty(n) if scratch is None else scratch.array("sample", (n,))
        np.divide(logits, temperature, out=x, dtype=np.float64)  # the cast in the same pass
        x -= np.float64(logits.max()) / temperature  # = x.max(): rounding keeps the order
        np.exp(x, out=x)
        x /= x.sum()
        np.cumsum(x, out=x)
        u = rng.random() * x[-1]
        return int(min(np.searchsorted(x, u, side="right"), n - 1))
    idx, p = filtered_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                            min_p=min_p, convention=convention)
    return int(idx[draw(p, rng)])
