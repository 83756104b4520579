"""SwiReasoning inside the engine: the model's token ids for the state machine, the
per-sequence trace, and one batched pick that turns each step into a token and a fed vector.

Models without single-token thinking delimiters (both bundled models) run the documented
deviation: the blends toward ``<think>``/``</think>`` are skipped, explicit mode locks when the
emitted text contains the thinking-end marker (never with ``''``), the convergence injection is
a no-op and the termination injection drops ``</think>``. The step-0 blend token is the
vocabulary piece backslash-n when one exists (as the authors' lookup), else the real newline
token (recorded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from led_local.decoding.filters import softmax_rows
from led_local.decoding.swir import SwirState, SwirVocab, feed_vector, soft_vectors, swir_pick

MATH_SYMBOLS = (
    "+ - * / ^ = < > \\leq \\geq \\neq \\approx \\sim \\equiv \\to \\implies \\iff "
    "( ) [ ] { } \\left( \\right) \\left[ \\right] \\left\\{ \\right\\} "
    "\\begin{pmatrix} \\end{pmatrix} \\frac \\dfrac \\sqrt \\sqrt[] "
    "\\in \\notin \\subset \\supset \\subseteq \\supseteq \\cup \\cap \\emptyset \\varnothing "
    "\\pi \\theta \\alpha \\beta \\gamma \\delta \\epsilon \\zeta \\lambda \\mu \\nu "
    "\\sin \\cos \\tan \\arcsin \\arccos \\arctan \\log \\ln \\exp "
    "_ \\binom \\choose \\cdot \\dots \\ldots \\cdots \\vdots \\ddots "
    "\\mathbb \\mathbf \\mathrm \\text \\mbox "
    "\\infty \\circ \\prime \\ast \\star \\triangle \\triangleleft \\triangleright \\perp "
    "\\parallel \\angle \\boxed \\overline \\underline \\lceil \\rceil \\lfloor \\rfloor "
    "\\left \\right \\mid | \\vert \\Vert \\because \\therefore \\forall \\exists \\wedge \\vee "
    "\\neg \\sum \\prod \\int \\lim \\min \\max \\arg \\deg \\gcd \\operatorname "
    "\\cot \\cotg \\sec \\csc"
).split() + list("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
QWEN_ARCHITECTURES = frozenset({"qwen2", "qwen3", "qwen3moe"})
FINAL_ANSWER = "\n\nThe final answer is"


def swir_vocab(rt, *, think_end: str, architecture: str,
               think_start: str = "<think>") -> tuple[SwirVocab, dict]:
    """The state machine's token ids for the model behind Runtime ``rt``, and notes on the
    deviations taken (for records); ``think_start``: the chat format's thinking-start marker
    (``<think>`` for a ``think_end`` of another format)."""
    def plain(text: str) -> list[int]:
        return rt.tokenize(text, special=False, bos=False)

    def single(text: str) -> int | None:
        ids = rt.tokenize(text, special=True, bos=False)
        return ids[0] if len(ids) == 1 else None

    close = single(think_end) if think_end else None
    open_ = single(think_start) if close is not None and think_start else None
    bs_n = plain("\\n")
    lb_fallback = not (len(bs_n) == 1 and rt.token_text(bs_n[0]) == "\\n")
    line_break = plain("\n")[-1] if lb_fallback else bs_n[0]
    math = frozenset(t for sym in MATH_SYMBOLS for t in plain(sym))
    if close is None:
        converge: tuple[int, ...] = ()
        terminate = tuple(plain(FINAL_ANSWER))
    else:
        words = think_end if architecture in QWEN_ARCHITECTURES else f"\n\n{think_end}\n\n"
        converge = tuple(rt.tokenize(words, special=True, bos=False))
        terminate = tuple(rt.tokenize(think_end + FINAL_ANSWER, special=True, bos=False))
    vocab = SwirVocab(open_, close, line_break, math, converge, terminate)
    notes = {"delimiters": close is not None, "line_break": line_break,
             "line_break_fallback": lb_fallback, "math_tokens": len(math)}
    return vocab, notes


@dataclass
class SwirTrace:
    """A sequence's SwiReasoning state and what it did: per step, whether the emitted token
    was fed back as itself (explicit) or not (latent or blended)."""

    state: SwirState = field(default_factory=SwirState)
    notes: dict = field(default_factory=dict)
    latent: list[bool] = field(default_factory=list)
    to_explicit: int = 0
    to_latent: int = 0
    stop: bool = False

    def report(self, *, full: bool = False) -> dict:
        out = {"switches": self.to_explicit + self.to_latent, "to_explicit": self.to_explicit,
               "to_latent": self.to_latent, "latent_steps": sum(self.latent),
               "locked": self.state.locked, "budget_stop": self.stop, **self.notes}
        if full:
            out["latent"] = "".join("L" if x else "E" for x in self.latent)
        return out


def pick_batch(engine, vocab: SwirVocab, seqs: list, final: np.ndarray) -> list[int]:
    """One SwiReasoning step for every sequence: the emitted tokens; each sequence's
    ``pending_vec`` is set to its fed vector (None when it feeds a plain token). Each
    sequence uses its own configuration (``s.cfg``, else the engine's)."""
    steps, probs = [], []
    # the full-vocabulary work of every row in one pass, in the engine's work arrays
    rows = softmax_rows(final, scratch=engine.scratch)
    for i, s in enumerate(seqs):
        tr: SwirTrace = s.trace
        cfg = s.cfg or engine.cfg

        def closes(x: int, s=s, cfg=cfg) -> bool:
            if vocab.think_close is not None:
                return x == vocab.think_close
            end = engine.scope_end(cfg)
            return end is not None and end.advance(s._text_tail, x, engine.rt.token_text(x))[1]

        step, p = swir_pick(final[i], tr.state, closes=closes, cfg=cfg.swir,
                            vocab=vocab, max_new=s.max_tokens,
                            temperature=cfg.temperature, rng=s.rng, top_k=cfg.top_k,
                            top_p=cfg.top_p, min_p=cfg.min_p, probs=(rows[0][i], rows[1][i]))
        tr.latent.append(step.feed.token is None)
        tr.to_explicit += step.to_explicit
        tr.to_latent += step.to_latent
        tr.stop = step.stop
        steps.append(step)
        probs.append(p)
    need = [i for i, st in enumerate(steps) if st.feed.soft != 0 and not st.stop]
    top_mass = engine.cfg.swir.top_mass  # engine-wide: it decides how the rows are held
    soft = (soft_vectors(np.stack([probs[i] for i in need]), engine.embeddings,
                         top_mass=top_mass) if need else [])
    soft_of = dict(zip(need, soft))
    for i, (s, st) in enumerate(zip(seqs, steps)):
        if st.feed.token is not None or st.stop:
            s.pending_vec = None
        else:
            s.pending_vec = feed_vector(st.feed, None, engine.embeddings, soft_of.get(i),
                                        top_mass=top_mass)
    return [st.token for st in steps]
