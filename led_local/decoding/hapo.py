"""HAPO's entropy-adaptive temperature as a decoder (docs/HAPO.md), pure numpy.

Per token: H = entropy of the untempered, unfiltered distribution; l = ln max(H, 1e-6);
h = (l - mu) / (sigma + 1e-6); h_hat = h * s_pos above the pivot, h * s_neg below it, clamped
to [-1, 1]; T = T0 (1 + tau h_hat); then vLLM's sampler (min-p, top-k, top-p) at T.

The statistics (mu, sigma, s_pos, s_neg) come from earlier samples' token entropies:
mu = the ``pivot``-quantile of their log-entropies (nearest rank), sigma = the RMS deviation
about mu, s_pos = 1 / the largest standardised value above mu, s_neg = 1 / the most negative
one below it (negative). ``signed`` (the default) scales the low side by 1 / |neg_min| so
that confident tokens are cooled; ``code`` keeps the released code's sign, where
h * s_neg >= 0 and every token is warmed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from led_local.decoding.filters import entropy, sample_token, softmax64
from led_local.errors import LedError, OutputError

VARIANTS = ("signed", "code")
STATS_FORMAT = "led-local-hapo-entropies/1"
MAX_STATS_BYTES = 256 << 20  # about 20 bytes per token: some 12 million tokens


@dataclass(frozen=True)
class HAPOStats:
    """Entropy statistics: pivot mu, scale sigma, one-sided scales s_pos > 0 and s_neg < 0,
    the quantile ``pivot`` they were computed at and the number of tokens ``n``."""

    mu: float
    sigma: float
    s_pos: float
    s_neg: float
    pivot: float
    n: int

    def to_json(self) -> dict:
        return asdict(self)


def compute_stats(entropies: np.ndarray | list[float], *, pivot: float = 0.8) -> HAPOStats | None:
    """HAPOStats of per-token entropies (nats), or None when there are none."""
    if not 0 <= pivot <= 1:
        raise LedError(f"--hapo-pivot must be in [0, 1], got {pivot}")
    h = np.asarray(entropies, dtype=np.float64).ravel()
    if h.size == 0:
        return None
    ell = np.log(np.maximum(h, 1e-8))
    n = ell.size
    mu = float(np.sort(ell)[round(pivot * (n - 1))])  # Python round: half to even
    sigma = math.sqrt(max(float(np.mean((ell - mu) ** 2)), 1e-8))
    z = (ell - mu) / sigma
    pos_max = max(float(z[z > 0].max()) if (z > 0).any() else 0.0, 1e-8)
    neg_min = min(float(z[z < 0].min()) if (z < 0).any() else 0.0, -1e-8)
    return HAPOStats(mu, sigma, 1.0 / pos_max, 1.0 / neg_min, float(pivot), int(n))


def scaled_entropy(h_t: float, stats: HAPOStats, *, variant: str = "signed") -> float:
    """h_hat in [-1, 1] for a token of entropy ``h_t`` (nats)."""
    h = (math.log(max(h_t, 1e-6)) - stats.mu) / (stats.sigma + 1e-6)
    if h > 0:
        x = h * stats.s_pos
    elif variant == "code":
        x = h * stats.s_neg
    else:
        x = h * abs(stats.s_neg)
    return min(1.0, max(-1.0, x))


def adaptive_temperature(h_t: float, stats: HAPOStats | None, *, t0: float, tau: float,
                         variant: str = "signed") -> float:
    """T_t = T0 (1 + tau h_hat); T0 itself without statistics (HAPO's first batch)."""
    if stats is None:
        return t0
    return t0 * (1.0 + tau * scaled_entropy(h_t, stats, variant=variant))


@dataclass(frozen=True)
class HAPOConfig:
    """HAPO's parameters: tau (0.05), pivot quantile (0.8), sign variant, and either frozen
    ``stats`` or ``rolling`` (problems per statistics batch, solve only)."""

    tau: float = 0.05
    pivot: float = 0.8
    variant: str = "signed"
    stats: HAPOStats | None = None
    rolling: int | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.tau) or not 0 <= self.tau <= 1:
            raise LedError(f"--hapo-tau must be in [0, 1], got {self.tau}")
        if not 0 <= self.pivot <= 1:
            raise LedError(f"--hapo-pivot must be in [0, 1], got {self.pivot}")
        if self.variant not in VARIANTS:
            raise LedError(f"--hapo-variant must be signed or code, got {self.variant!r}")
        if self.rolling is not None and self.rolling < 1:
            raise LedError(f"--hapo-rolling must be >= 1 problem per batch, got {self.rolling}")


@dataclass
class HAPOTrace:
    """Per-sequence record: the statistics used, each token's entropy and temperature."""

    stats: HAPOStats | None
    entropies: list[float]
    temperatures: list[float]

    def report(self, *, full: bool = False) -> dict:
        """{"hapo": ...} for records; ``full`` adds every token's entropy (rolling runs)."""
        return {"hapo": self.summary(with_entropies=full)}

    def summary(self, *, with_entropies: bool = False) -> dict:
        t = self.temperatures
        out = {
            "stats": self.stats.to_json() if self.stats else None,
            "t_mean": round(float(np.mean(t)), 6) if t else None,
            "t_min": round(min(t), 6) if t else None,
            "t_max": round(max(t), 6) if t else None,
        }
        if with_entropies:
            out["entropies"] = list(self.entropies)
        return out


def hapo_pick(logits: np.ndarray, *, t0: float, cfg: HAPOConfig, trace: HAPOTrace,
              rng: np.random.Generator, top_k: int = 0, top_p: float = 1.0,
              min_p: float = 0.0) -> int:
    """One HAPO step on a row of logits (V,): entropy, temperature, vLLM-order sample.
    Appends the entropy and temperature to ``trace``; T0 = 0 is greedy."""
    h_t = entropy(softmax64(logits))
    t = adaptive_temperature(h_t, trace.stats, t0=t0, tau=cfg.tau, variant=cfg.variant)
    trace.entropies.append(h_t)
    trace.temperatures.append(t)
    return sample_token(logits, temperature=t, rng=rng, top_k=top_k, top_p=top_p, min_p=min_p,
                        convention="vllm")


def save_entropies(path: str | os.PathLike, entropies: list[float], *, meta: dict) -> None:
    """Write a calibration file: the per-token entropies and what produced them. It is
    written beside ``path`` and renamed over it, so a failed write (OutputError) leaves an
    existing file as it was."""
    p = Path(path)
    data = {"format": STATS_FORMAT, **meta, "n_tokens": len(entropies), "entropies": entropies}
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {p}: {e.strerror}") from None


def load_entropies(path: str | os.PathLike) -> list[float]:
    """The entropies of a calibration file written by ``hapo-calibrate``: a list of finite
    non-negative numbers, at most MAX_STATS_BYTES of file."""
    p = Path(path)
    if not p.is_file():
        raise LedError(f"--hapo-stats file not found: {p}")
    try:
        if p.stat().st_size > MAX_STATS_BYTES:
            raise LedError(f"--hapo-stats {p} is larger than {MAX_STATS_BYTES} bytes; make it "
                           "with led-local hapo-calibrate")
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise LedError(f"cannot read --hapo-stats {p}: {e.strerror}") from None
    except (ValueError, RecursionError):
        raise LedError(f"--hapo-stats {p} is not JSON; make it with led-local "
                       "hapo-calibrate") from None
    if not isinstance(data, dict) or data.get("format") != STATS_FORMAT \
            or not isinstance(data.get("entropies"), list) or not data["entropies"]:
        raise LedError(f"--hapo-stats {p} is not a led-local hapo-calibrate file with entropies")
    values = data["entropies"]
    for i, x in enumerate(values):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) \
                or x < 0:
            raise LedError(f"--hapo-stats {p}: entropy {i} must be a finite number >= 0, got "
                           f"{json.dumps(x)[:40]}")
    return [float(x) for x in values]
