"""HAPO's entropy-adaptive temperature as a decoder (docs/HAPO.md), pure numpy.

Per token: H = entropy of the untempered, unfiltered distribution; l = ln max(H, 1e-6);
h = (l - mu) / (sigma + 1e-6); h_hat = h * s_pos above the pivot, h * s_neg below it, clamped
to [-1, 1]; T = T0 (1 + tau h_hat); then vLLM's sampler (min-p, top-k, top-p) at T.

The statistics (mu, sigma, s_pos, s_neg) come from earlier samples' token entropies, at the
sampling temperature (of softmax(z / T0), as the authors' trainer recomputes them from the
rollouts; the per-token H is the released sampler's, of the raw logits):
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

from led_local.decoding.filters import Scratch, sample_token
from led_local.decoding.options import MIN_P, TEMPERATURE, THINK_END, TOP_K, TOP_P, Option
from led_local.decoding.unit import DecodingMethod
from led_local.errors import ConfigError, LedError, OutputError

NAME = "hapo"
VARIANTS = ("signed", "code")
STATS = Option("hapo_stats", "path", None, "Entropy statistics file from led-local "
               "hapo-calibrate.", http="", default_help="none")
TAU = Option("hapo_tau", float, 0.05, "Largest relative temperature change.", low=0, high=1)
PIVOT = Option("hapo_pivot", float, 0.8, "Quantile of the log-entropies used as pivot.",
               low=0, high=1, http="")
VARIANT = Option("hapo_variant", str, "signed", "signed cools confident tokens (the paper's "
                 "intent); code warms every token (the released code).", choices=VARIANTS)
ROLLING = Option("hapo_rolling", int, None, "Rolling statistics, each batch of N problems "
                 "using the previous batch's token entropies (the first batch at plain T0).",
                 low=1, note="problem per batch", http="", commands=frozenset({"solve"}),
                 default_help="off")
STATS_FORMAT = "led-local-hapo-entropies/1"  # "temperature": the entropies' (absent: 1)
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
    PIVOT.check(pivot)
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
        TAU.check(self.tau)
        PIVOT.check(self.pivot)
        VARIANT.check(self.variant)
        ROLLING.check(self.rolling)


@dataclass
class HAPOTrace:
    """Per-sequence record: the statistics used, each token's entropy at the sampling
    temperature T0 (what later statistics are computed from; None: not kept, which spares a
    pass over the vocabulary per token where no statistics are made from them) and
    temperature."""

    stats: HAPOStats | None
    entropies: list[float] | None
    temperatures: list[float]

    def summary(self, *, with_entropies: bool = False) -> dict:
        t = self.temperatures
        out = {
            "stats": self.stats.to_json() if self.stats else None,
            "t_mean": round(float(np.mean(t)), 6) if t else None,
            "t_min": round(min(t), 6) if t else None,
            "t_max": round(max(t), 6) if t else None,
        }
        if with_entropies:
            out["entropies"] = list(self.entropies or ())
        return out


def token_entropies(logits: np.ndarray, *, scratch: Scratch | None = None) -> np.ndarray:
    """H of the untempered, unfiltered distribution of each row of logits (..., V), in nats
    (float64): one exp over the rows, no log over the vocabulary. The operations of
    ``entropy_rows(*softmax_rows(logits))``, value for value, in place on two arrays
    (``scratch``'s when given), with the passes that change nothing left out."""
    logits = np.asarray(logits)
    if scratch is None:
        x, e = np.empty(logits.shape), np.empty(logits.shape)
    else:
        x, e = scratch.array("x", logits.shape), scratch.array("e", logits.shape)
    # the max of the rows as they are (a float32 max is the float64 one, exactly): the cast
    # and the shift in one pass
    np.subtract(logits, logits.max(axis=-1, keepdims=True), out=x, dtype=np.float64)
    np.exp(x, out=e)
    s = e.sum(axis=-1, keepdims=True)
    e /= s  # p
    x -= np.log(s)  # log p
    with np.errstate(invalid="ignore"):  # 0 * -inf, mended below
        x *= e
    h = -x.sum(axis=-1)
    if np.isnan(h).any():  # a -inf logit (0 * -inf): it adds nothing, as p ln p -> 0 says
        x[np.isnan(x)] = -0.0  # (what p = 0 times the most negative float gives)
        h = -x.sum(axis=-1)
    return h


def stats_temperature(t0: float) -> float:
    """The temperature of the entropies HAPO's statistics are computed from: T0 (1 for
    greedy T0 = 0, where no statistics matter)."""
    return t0 if t0 > 0 else 1.0


def tempered_entropies(logits: np.ndarray, t0: float, raw: np.ndarray | None = None, *,
                       scratch: Scratch | None = None) -> np.ndarray:
    """H of softmax(z / T0) of each row of logits (..., V) (``token_entropies``); ``raw``:
    the untempered ones, which are these at T0 = 1."""
    t = stats_temperature(t0)
    if t == 1.0:
        return token_entropies(logits, scratch=scratch) if raw is None else raw
    return token_entropies(np.asarray(logits, dtype=np.float64) / t, scratch=scratch)


def hapo_pick(logits: np.ndarray, *, t0: float, cfg: HAPOConfig, trace: HAPOTrace,
              rng: np.random.Generator, top_k: int = 0, top_p: float = 1.0,
              min_p: float = 0.0, h_t: float | None = None,
              scratch: Scratch | None = None) -> int:
    """One HAPO step on a row of logits (V,): entropy, temperature, vLLM-order sample.
    Appends the entropy at T0 (``tempered_entropies``; where ``trace`` keeps them) and the
    temperature to ``trace``; T0 = 0 is greedy. ``h_t``: the row's untempered entropy when
    computed for a whole batch; ``scratch``: work arrays to borrow."""
    if h_t is None:
        h_t = float(token_entropies(logits, scratch=scratch))
    if trace.entropies is not None:
        trace.entropies.append(float(tempered_entropies(logits, t0, np.float64(h_t),
                                                        scratch=scratch)))
    t = adaptive_temperature(h_t, trace.stats, t0=t0, tau=cfg.tau, variant=cfg.variant)
    trace.temperatures.append(t)
    return sample_token(logits, temperature=t, rng=rng, top_k=top_k, top_p=top_p, min_p=min_p,
                        convention="vllm", scratch=scratch)


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


def load_entropies(path: str | os.PathLike, *, temperature: float | None = None) -> list[float]:
    """The entropies of a calibration file written by ``hapo-calibrate``: a list of finite
    non-negative numbers, at most MAX_STATS_BYTES of file. ``temperature``: the run's T0;
    a file whose entropies were computed at another temperature is refused (a file without
    one holds entropies of the raw logits, from before they were tempered: temperature 1)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(STATS.name, f"file not found: {p}")
    try:
        if p.stat().st_size > MAX_STATS_BYTES:
            raise ConfigError(STATS.name, f"{p} is larger than {MAX_STATS_BYTES} bytes; make it "
                           "with led-local hapo-calibrate")
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(STATS.name, f"{p} cannot be read: {e.strerror}") from None
    except (ValueError, RecursionError):
        raise ConfigError(STATS.name, f"{p} is not JSON; make it with led-local "
                       "hapo-calibrate") from None
    if not isinstance(data, dict) or data.get("format") != STATS_FORMAT \
            or not isinstance(data.get("entropies"), list) or not data["entropies"]:
        raise ConfigError(STATS.name, f"{p} is not a led-local hapo-calibrate file with entropies")
    values = data["entropies"]
    made = data.get("temperature", 1.0)
    if isinstance(made, bool) or not isinstance(made, int | float) or not made > 0:
        raise ConfigError(STATS.name, f"{p}: temperature must be a number > 0, got "
                          f"{json.dumps(made)[:40]}")
    if temperature is not None and temperature > 0 and made != stats_temperature(temperature):
        raise ConfigError(STATS.name, f"{p} holds entropies at temperature {made:g}, this run "
                          f"samples at {temperature:g}: calibrate at `temperature` "
                          f"{temperature:g}")
    for i, x in enumerate(values):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) \
                or x < 0:
            raise ConfigError(STATS.name, f"{p}: entropy {i} must be a finite number >= 0, got "
                           f"{json.dumps(x)[:40]}")
    return [float(x) for x in values]


class HAPO(DecodingMethod):
    name = NAME
    help = "entropy-adaptive temperature"
    options = (STATS, TAU, PIVOT, VARIANT, ROLLING)
    shared = (TEMPERATURE, TOP_K, TOP_P, MIN_P, THINK_END)
    defaults = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    records = NAME

    def configure(self, values, base):
        path, rolling = values["hapo_stats"], values["hapo_rolling"]
        if base is not None and path is None and rolling is None:
            # a request: the statistics are the server's, made at its temperature
            if base.hapo.stats is not None and stats_temperature(values["temperature"]) \
                    != stats_temperature(base.temperature):
                raise ConfigError(TEMPERATURE.name, f"must be the server's "
                                  f"{base.temperature:g} with its HAPO statistics (entropies "
                                  f"at that temperature), got {values['temperature']:g}")
            return {"hapo": HAPOConfig(tau=values["hapo_tau"], pivot=base.hapo.pivot,
                                       variant=values["hapo_variant"], stats=base.hapo.stats,
                                       rolling=base.hapo.rolling)}
        if (path is None) == (rolling is None):
            raise ConfigError(STATS.name, "FILE (from led-local hapo-calibrate) is needed"
                              + " (or `hapo_rolling` N with solve)"
                              + (", not both" if rolling is not None else ""))
        pivot = values["hapo_pivot"]
        stats = None if path is None else compute_stats(
            load_entropies(path, temperature=values["temperature"]), pivot=pivot)
        return {"hapo": HAPOConfig(tau=values["hapo_tau"], pivot=pivot,
                                   variant=values["hapo_variant"], stats=stats, rolling=rolling)}

    def values(self, cfg):
        h = cfg.hapo
        return {"hapo_stats": None, "hapo_tau": h.tau, "hapo_pivot": h.pivot,
                "hapo_variant": h.variant, "hapo_rolling": None}

    def params(self, cfg):
        h = cfg.hapo
        p = {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
             "min_p": cfg.min_p, "hapo_tau": h.tau, "hapo_pivot": h.pivot,
             "hapo_variant": h.variant}
        if h.rolling is not None:
            p.update(hapo_rolling=h.rolling)
        else:
            p.update(hapo_stats=h.stats.to_json() if h.stats else None)
        if stats_temperature(cfg.temperature) != 1.0:  # (at 1 the records are as they were)
            p.update(hapo_stats_temperature=cfg.temperature)
        return p

    def setup(self, engine):
        engine.shared[NAME] = engine.cfg.hapo.stats  # solve's rolling statistics replace it

    def start(self, engine, seq, cfg, seed):
        super().start(engine, seq, cfg, seed)
        stats = engine.shared.get(NAME, cfg.hapo.stats)
        # the entropies at T0 make statistics (calibration, rolling) and go nowhere else
        keep = stats is None or cfg.hapo.rolling is not None
        seq.trace = HAPOTrace(stats, [] if keep else None, [])

    def pick(self, engine, batch, idx):
        # every row's full-vocabulary pass at once, in the engine's work arrays
        rows = batch.final[idx]
        h = token_entropies(rows, scratch=engine.scratch)
        for i, h_t in zip(idx, h):
            cfg, s = batch.cfgs[i], batch.seqs[i]
            batch.tokens[i] = hapo_pick(batch.final[i], t0=cfg.temperature, cfg=cfg.hapo,
                                        trace=s.trace, rng=s.rng, top_k=cfg.top_k,
                                        top_p=cfg.top_p, min_p=cfg.min_p, h_t=float(h_t),
                                        scratch=engine.scratch)

    def record(self, seq, cfg, *, full=False):
        return {NAME: seq.trace.summary(with_entropies=full)}

    def full_records(self, cfg):
        return cfg.hapo.rolling is not None


def set_stats(engine, stats: HAPOStats | None) -> None:
    """What new HAPO sequences of ``engine`` use from now on (solve's rolling statistics)."""
    engine.shared[NAME] = stats


METHOD = HAPO()


def recorded_entropies(rec: dict, *, where: str) -> list[float]:
    """The token entropies a rolling HAPO record carries ([] for a skipped problem or another
    method's record); a malformed list is an error naming ``where`` (the run file) and the
    record."""
    fields = rec.get(NAME)
    if fields is None:
        return []
    values = fields.get("entropies", []) if isinstance(fields, dict) else None
    if not isinstance(values, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            and x >= 0 for x in values):
        raise LedError(f"{where}: problem {rec['problem_id']!r} sample {rec['sample']}: "
                       f"'{NAME}.entropies' must be a list of finite non-negative numbers")
    return [float(x) for x in values]
