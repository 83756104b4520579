"""SwiReasoning's per-step state machine (docs/SWIR.md), pure numpy.

Each sequence alternates between explicit steps (the sampled token is fed back) and latent
steps (the probability-weighted mixture of all token embeddings, p^T E, is fed back). It
starts latent; it turns explicit as soon as the entropy of the untempered next-token
distribution falls below ``ref`` (the entropy at the last switch), and turns latent again when
the entropy rises above ``ref`` after at least ``window`` explicit steps, unless the thinking
section was closed by a sampled end-of-thinking token (``locked``). A sampled math token is
always fed explicitly. Entering latent mode blends the soft vector toward ``<think>`` and
entering explicit mode feeds a blend of it with ``</think>`` (weights ramping to 1 over the
generation budget); step 0 blends toward the line-break token. With ``max_switch`` M set,
switches M..2M queue the convergence tokens and switch 2M+1 queues the termination tokens and
starts an answer budget: forced tokens replace the sampled ones from the next step on, and the
sequence stops when the budget runs out.

Every emitted token is the sampled (or forced) one, also on latent steps where it is not fed.
What is fed is described by a ``Feed``: c_soft p^T E + sum_t c_t E[t].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from led_local.decoding.filters import entropy_rows, sample_token, softmax_rows
from led_local.decoding.options import MIN_P, TEMPERATURE, THINK_END, TOP_K, TOP_P, Option
from led_local.decoding.unit import DecodingMethod
from led_local.errors import ConfigError, LedError

NAME = "swir"
WINDOW = Option("swir_window", int, 512, "Explicit steps before latent mode may return.", low=0)
MAX_SWITCH = Option("swir_max_switch", int, None, "Switch count M that starts closing "
                    "thinking (M..2M) and forcing the answer (2M+1).", low=1,
                    default_help="off")
ALPHA = Option("swir_alpha", float, 1.0, "Initial weight of the soft vector against <think> on "
               "entering latent mode.", low=0, high=1)
BETA = Option("swir_beta", float, 0.7, "Initial weight of the soft vector against </think> on "
              "entering explicit mode.", low=0, high=1)
TOP_MASS = Option("swir_top_mass", float, 1.0, "Opt-in approximation: mix only the most "
                  "probable tokens up to this probability mass, reading embedding rows from "
                  "the file instead of a float32 copy (1: the exact mixture).", low=0, high=1,
                  low_open=True)

LATENT, EXPLICIT = 0, 1
P_FLOOR = 1e-12  # inside the log of the entropy
STEP0_BLEND = 0.9  # step 0: 0.9 p^T E + 0.1 E[line break]


@dataclass(frozen=True)
class SwirConfig:
    """window W: explicit steps before latent mode may return (512); max_switch M: switch
    control, None = off; alpha, beta: initial blend weights of the soft vector toward
    ``<think>`` on entering latent mode (1.0 = no blend) and toward ``</think>`` on entering
    explicit mode (0.7); budget: tokens of the forced answer (32); top_mass: 1.0 mixes all
    token embeddings (exact); below 1 an opt-in approximation mixes only the smallest set of
    most probable tokens whose probability reaches it, renormalised, and the engine then
    reads embedding rows from the file on demand instead of holding a float32 copy."""

    window: int = 512
    max_switch: int | None = None
    alpha: float = 1.0
    beta: float = 0.7
    budget: int = 32
    top_mass: float = 1.0

    def __post_init__(self) -> None:
        WINDOW.check(self.window)
        MAX_SWITCH.check(self.max_switch)
        ALPHA.check(self.alpha)
        BETA.check(self.beta)
        if self.budget < 1:
            raise LedError(f"the answer budget must be >= 1, got {self.budget}")
        TOP_MASS.check(self.top_mass)


@dataclass(frozen=True)
class SwirVocab:
    """Token ids the state machine needs. think_open/think_close: single-token thinking
    delimiters, None when the model has none (their blends are then skipped); line_break: the
    step-0 blend token; math: ids always fed explicitly; converge/terminate: the injections."""

    think_open: int | None
    think_close: int | None
    line_break: int
    math: frozenset[int]
    converge: tuple[int, ...]
    terminate: tuple[int, ...]


class Feed(NamedTuple):
    """What the next step feeds: soft * p^T E + sum(c * E[t] for t, c in rows)."""

    soft: float
    rows: tuple[tuple[int, float], ...]

    @property
    def token(self) -> int | None:
        """The token id when the feed is exactly one token's embedding (the token path)."""
        if self.soft == 0 and len(self.rows) == 1 and self.rows[0][1] == 1.0:
            return self.rows[0][0]
        return None


@dataclass
class SwirState:
    """One sequence's state; ``step`` counts the steps taken."""

    mode: int = LATENT
    stay: int = 0
    ref: float | None = None
    locked: bool = False
    count: int = 0
    queue: list[int] = field(default_factory=list)
    injecting: bool = False
    budget: int = -1
    step: int = 0


class SwirStep(NamedTuple):
    """One step's outcome: the emitted token, what to feed, the entropy, the switches, and
    whether the answer budget ran out (stop after emitting ``token``)."""

    token: int
    feed: Feed
    entropy: float
    to_explicit: bool
    to_latent: bool
    stop: bool


def swir_entropy(p: np.ndarray, logp: np.ndarray | None = None) -> float:
    """H = -sum p ln max(p, 1e-12) of the untempered distribution p (V,), float64; ``logp``:
    ln p when known (``filters.softmax_rows``), which spares a log over the vocabulary."""
    p = np.asarray(p, dtype=np.float64)
    if logp is not None:
        return float(entropy_rows(p, logp, floor=P_FLOOR))
    return float(-(p * np.log(np.maximum(p, P_FLOOR))).sum())


def swir_step(state: SwirState, p: np.ndarray, sampled: int, *, closes: bool,
              cfg: SwirConfig, vocab: SwirVocab, max_new: int,
              entropy: float | None = None) -> SwirStep:
    """Advance ``state`` by one step (mutated in place).

    p: (V,) untempered, unfiltered next-token probabilities; sampled: the token drawn from
    the filtered, tempered distribution; closes: whether that sampled token ends the thinking
    section (it locks explicit mode); max_new: the generation budget S_max (ramps the blends);
    entropy: ``swir_entropy(p)`` when already computed.
    """
    s = state.step
    if closes:
        state.locked = True
    x = sampled
    if cfg.max_switch is not None and state.injecting and state.queue:
        x = state.queue.pop(0)
        if not state.queue:
            state.injecting = False
    h = swir_entropy(p) if entropy is None else entropy
    to_e = to_l = False
    if s == 0:
        state.ref = h
    else:
        state.stay += 1
        to_e = state.mode == LATENT and h < state.ref
        to_l = (state.mode == EXPLICIT and h > state.ref and state.stay >= cfg.window
                and not state.locked)
        if to_e or to_l:
            state.mode = EXPLICIT if to_e else LATENT
            state.stay = 0
            state.ref = h
            state.count += to_e
    explicit = state.mode == EXPLICIT or state.locked or x in vocab.math
    ramp = s / max_new
    alpha = cfg.alpha + (1 - cfg.alpha) * ramp
    beta = cfg.beta + (1 - cfg.beta) * ramp
    if explicit and s > 0 and to_e and vocab.think_close is not None:
        feed = Feed(beta, ((vocab.think_close, 1 - beta),))
    elif explicit:  # (without a single-token </think> the blend is skipped: E[x] itself)
        feed = Feed(0.0, ((x, 1.0),))
    elif s == 0:
        feed = Feed(STEP0_BLEND, ((vocab.line_break, 1 - STEP0_BLEND),))
    elif to_l and vocab.think_open is not None:
        feed = Feed(alpha, ((vocab.think_open, 1 - alpha),))
    else:
        feed = Feed(1.0, ())
    stop = False
    m = cfg.max_switch
    if m is not None and s > 0:
        if to_e and m <= state.count <= 2 * m and vocab.converge:
            state.queue, state.injecting = list(vocab.converge), True
        if to_e and state.count > 2 * m:
            state.queue, state.injecting = list(vocab.terminate), True
            state.budget = cfg.budget
        if state.budget >= 0:
            state.budget -= 1
        stop = state.budget == 0
    state.step += 1
    return SwirStep(x, feed, h, to_e, to_l, stop)


def swir_pick(logits: np.ndarray, state: SwirState, *, closes: Callable[[int], bool],
              cfg: SwirConfig, vocab: SwirVocab, max_new: int, temperature: float,
              rng: np.random.Generator | None, top_k: int = 0, top_p: float = 1.0,
              min_p: float = 0.0, probs: tuple[np.ndarray, np.ndarray] | None = None,
              ) -> tuple[SwirStep, np.ndarray]:
    """One decoding step of a sequence from its logits (V,): p = softmax(z) untempered, the
    sampled token from the tempered, filtered distribution (the authors' filter order:
    top-k, top-p, absolute min-p; argmax at T = 0), then ``swir_step``. Returns the step
    and p (float64), which the soft vector needs. ``closes(token)`` tells whether a sampled
    token ends the thinking section; ``probs``: (p, ln p) of the row when computed for a
    whole batch at once (``filters.softmax_rows``)."""
    p, logp = softmax_rows(logits) if probs is None else probs
    if state.queue and logits[state.queue[0]] == -np.inf:
        # under a grammar (constrained output) an injection the grammar forbids gives way
        state.queue, state.injecting = [], False
    x = sample_token(logits, temperature=temperature, rng=rng, top_k=top_k, top_p=top_p,
                     min_p=min_p, convention="hf")
    step = swir_step(state, p, x, closes=closes(x), cfg=cfg, vocab=vocab, max_new=max_new,
                     entropy=swir_entropy(p, logp))
    return step, p


def feed_vector(feed: Feed, p: np.ndarray | None, embeddings,
                soft: np.ndarray | None = None, *, top_mass: float = 1.0) -> np.ndarray:
    """The fed vector (n_embd,) float32 of ``feed``. embeddings: (V, n_embd) rows as fed
    (pre-scaled where the model scales token input), a matrix or LazyInputRows; ``soft`` =
    the soft vector when already computed."""
    v = np.zeros(embeddings.shape[1], np.float32)
    if feed.soft != 0:
        if soft is None:
            soft = soft_vectors(np.asarray(p, np.float32)[None, :], embeddings,
                                top_mass=top_mass)[0]
        v += np.float32(feed.soft) * soft
    for tok, c in feed.rows:
        v += np.float32(c) * embeddings[tok]
    return v


def soft_vectors(p: np.ndarray, embeddings, *, top_mass: float = 1.0) -> np.ndarray:
    """p^T E for each row of p (r, V) -> (r, n_embd) float32.

    BLAS picks different kernels (and summation orders) for different row counts, so each row
    is its own vector-matrix product: a row's result never depends on what shares the step
    (tested), at the cost of reading E once per row (memory-bound, like a decode step).

    top_mass < 1 (opt-in approximation): each row mixes only ``top_set(p, top_mass)`` with
    its probabilities renormalised to sum to 1, reading only those rows of E (which may then
    be a LazyInputRows)."""
    p = np.asarray(p, np.float32)
    if top_mass >= 1 and not isinstance(embeddings, np.ndarray):
        raise ConfigError(TOP_MASS.name, "1 (the exact soft token) needs the whole "
                          "embedding matrix")
    out = np.empty((p.shape[0], embeddings.shape[1]), np.float32)
    with one_blas_thread():
        for i in range(p.shape[0]):
            if top_mass >= 1:
                out[i] = p[i] @ embeddings
            else:
                ids = top_set(p[i], top_mass)
                w = p[i][ids]
                out[i] = (w / w.sum()) @ embeddings[ids]
    return out


_BLAS = None


def one_blas_thread():
    """A context in which numpy's BLAS runs on the calling thread alone.

    After a multi-threaded product, OpenBLAS's worker threads spin for a while; on cores that
    llama.cpp's threads need for the next decode this doubled that decode's time (SmolLM2:
    a decode of fed vectors took 25 ms instead of 12 ms, bench/bench.py --what methods).
    One thread gives the same result (each output is one dot product, summed in the same
    order; tested)."""
    global _BLAS
    from threadpoolctl import ThreadpoolController

    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def top_set(p: np.ndarray, mass: float) -> np.ndarray:
    """Ids of the smallest set of most probable tokens whose probability (p: a distribution)
    reaches ``mass`` (ties broken by lower id), in decreasing order of probability."""
    order = np.argsort(-p, kind="stable")
    csum = np.cumsum(p[order], dtype=np.float64)
    k = int(np.searchsorted(csum, mass)) + 1
    return order[:min(k, len(order))]


def think_start(fmt, think_end: str | None) -> str:
    """The marker whose token a latent stretch blends toward: the chat format's own start
    marker when the run ends thinking at the format's end marker, else ``<think>``."""
    return fmt.think_start if fmt.think_start and think_end == fmt.think_end else "<think>"


class SwiReasoning(DecodingMethod):
    name = NAME
    help = "SwiReasoning latent/explicit switching"
    options = (WINDOW, MAX_SWITCH, ALPHA, BETA, TOP_MASS)
    shared = (TEMPERATURE, TOP_K, TOP_P, MIN_P, THINK_END)
    records = NAME

    def configure(self, values, base):
        return {"swir": SwirConfig(window=values["swir_window"],
                                   max_switch=values["swir_max_switch"],
                                   alpha=values["swir_alpha"], beta=values["swir_beta"],
                                   top_mass=values["swir_top_mass"])}

    def values(self, cfg):
        w = cfg.swir
        return {"swir_window": w.window, "swir_max_switch": w.max_switch, "swir_alpha": w.alpha,
                "swir_beta": w.beta, "swir_top_mass": w.top_mass}

    def params(self, cfg):
        w = cfg.swir
        p = {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
             "min_p": cfg.min_p, "swir_window": w.window, "swir_max_switch": w.max_switch,
             "swir_alpha": w.alpha, "swir_beta": w.beta, "swir_think_end": cfg.think_end}
        if w.top_mass < 1:  # the approximation; the exact mixture keeps old records' params
            p.update(swir_top_mass=w.top_mass)
        return p

    def setup(self, engine):
        from led_local.decoding import latent
        from led_local.llama.embeddings import input_rows

        cfg = engine.cfg
        engine.embeddings = input_rows(engine.info, resident=cfg.swir.top_mass >= 1)
        engine.shared[NAME] = latent.swir_vocab(engine.rt, think_end=cfg.think_end,
                                                architecture=engine.info.architecture,
                                                think_start=think_start(engine.format,
                                                                        cfg.think_end))

    def check(self, engine, cfg):
        if NAME not in engine.shared:
            raise LedError(f"method {NAME} needs the input embeddings, which only an engine "
                           f"started with method {NAME} loads (this one: {engine.cfg.method})")
        if cfg.swir.top_mass != engine.cfg.swir.top_mass:
            raise ConfigError(TOP_MASS.name, f"{cfg.swir.top_mass} differs from this engine's "
                              f"{engine.cfg.swir.top_mass}, which decides how embeddings are "
                              "held")

    def start(self, engine, seq, cfg, seed):
        from led_local.decoding import latent

        super().start(engine, seq, cfg, seed)
        seq.trace = latent.SwirTrace(notes=dict(engine.shared[NAME][1]))

    def pick(self, engine, batch, idx):
        from led_local.decoding import latent

        seqs = [batch.seqs[i] for i in idx]
        picks = latent.pick_batch(engine, engine.shared[NAME][0], seqs, batch.final[idx])
        for i, tok in zip(idx, picks):
            batch.tokens[i] = tok

    def after_accept(self, engine, seq):
        if seq.trace.stop and not seq.done:
            seq.finish_reason = "stop"  # the forced answer's budget ran out

    def record(self, seq, cfg, *, full=False):
        return {NAME: seq.trace.report(full=full)}

    def full_records(self, cfg):
        return True


METHOD = SwiReasoning()
