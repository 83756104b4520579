"""The per-position analysis of ``led-local inspect``: pure numpy on one position's logits.

A position has the final layer's logits Z_0 (V,) and, for each norm setting, the logits
Z_1..Z_{d-1} of LED's shallower depths: ``ln0`` projects the raw states through the LM head
(the reference's default), ``ln1`` applies the model's final norm first (``--led-norm``).
LED's own maths (candidates, their probabilities, the depth posteriors S_j and their
entropies H_j) come from ``decoding.samplers``, the functions decoding uses; this module adds
only what LED never computes: full-vocabulary entropies, candidate mass and the
total-variation distances that say how far LED moves the emitted-token distribution.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from led_local.decoding.samplers import (
    LEDConfig,
    depth_entropies,
    depth_posteriors,
    probs_at,
    top_candidates,
)

NORMS = ("ln0", "ln1")  # without and with the final norm before the LM head
TEMPERATURE_STEP = 0.1  # tv_temperature compares T with T + 0.1


def softmax_stats(logits: np.ndarray, candidates: np.ndarray, temperature: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Full-vocabulary entropy (nats) of softmax(logits / T) and its mass on ``candidates``.

    logits: (..., V); candidates: (k,) ids. Returns two (...,) float64 arrays. One pass over
    the rows in float32 with float64 sums; T = 0 means no division (LED.md step 1).
    """
    z = np.asarray(logits, dtype=np.float32)
    scale = np.float32(1.0 / temperature if temperature > 0 else 1.0)
    z = (z - z.max(axis=-1, keepdims=True)) * scale
    e = np.exp(z)
    total = e.sum(axis=-1, dtype=np.float64)
    h = np.log(total) - (e * z).sum(axis=-1, dtype=np.float64) / total
    mass = e[..., candidates].sum(axis=-1, dtype=np.float64) / total
    return h, mass


def entropy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Full-vocabulary entropy (nats) of softmax(logits / T): (..., V) -> (...,) float64."""
    return softmax_stats(logits, np.zeros(0, np.int64), temperature)[0]


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """TV distance between two distributions over the same k outcomes: half the L1 norm."""
    return float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def _plain(q: np.ndarray, temperature: float) -> np.ndarray:
    """Plain top-k sampling over the candidates: q normalised, a point mass on the first
    candidate at T = 0 (the argmax, as LED's base token)."""
    if temperature > 0:
        return q / q.sum()
    out = np.zeros(len(q))
    out[0] = 1.0
    return out


def norm_values(final: np.ndarray, shallow: np.ndarray, candidates: np.ndarray,
                q: np.ndarray, *, temperature: float, gate: float, in_scope: bool) -> dict:
    """One norm setting's values at one position.

    final: (V,) Z_0; shallow: (d-1, V) Z_1..Z_{d-1}; candidates, q: (k,) from the final
    layer. Returns depth_entropy and candidate_mass (d-1 each), posterior_entropy (d: H_0..
    H_{d-1}), j_star, tv_explore = TV(S_{j*}, plain top-k) and tv_emit = gate x tv_explore in
    scope, 0 out of scope. At T = 0 both draws are argmaxes, so tv_explore is 1 when the
    exploration token differs from the base token and 0 otherwise.
    """
    h_depth, mass = softmax_stats(shallow, candidates, temperature)
    z = np.concatenate([np.asarray(final, np.float32)[None], np.asarray(shallow, np.float32)])
    s = depth_posteriors(z, candidates, temperature=temperature)
    h = depth_entropies(s)
    j = int(np.argmax(h))  # the first maximum, as LED.md step 6
    if temperature > 0:
        tv_explore = total_variation(s[j], _plain(q, temperature))
    else:
        tv_explore = float(int(np.argmax(s[j])) != 0)
    return {
        "depth_entropy": h_depth.tolist(),
        "candidate_mass": mass.tolist(),
        "posterior_entropy": h.tolist(),
        "j_star": j,
        "tv_explore": tv_explore,
        "tv_emit": gate * tv_explore if in_scope else 0.0,
    }


def analyse_position(final: np.ndarray, shallow: Mapping[str, np.ndarray], *, token: int,
                     led: LEDConfig, in_scope: bool,
                     layers: Mapping[str, np.ndarray] | None = None) -> dict:
    """Everything ``inspect`` reports at one response position, as one JSON-ready step.

    final: (V,) the model's logits at the position that predicts ``token``; shallow: for
    "ln0" and "ln1", the (d-1, V) logits of LED's depths 1..d-1; layers (``--all-layers``):
    for each norm, the (L, V) logit lens of every block's output. ``led`` gives T, k and the
    gate rule: ``gate`` is 1 - max(q) with exploitation on, 1 with ``--no-exploit``.
    """
    t = led.temperature
    final = np.asarray(final, dtype=np.float32)
    candidates = top_candidates(final, led.candidates)
    q = probs_at(final, candidates, t)
    gate = float(1.0 - q.max()) if led.exploit else 1.0
    warmer = probs_at(final, candidates, t + TEMPERATURE_STEP)
    step = {
        "token": int(token),
        "entropy_final": float(entropy(final, t)),
        "gate": gate,
        "in_scope": bool(in_scope),
        "tv_temperature": total_variation(_plain(q, t), warmer / warmer.sum()),
    }
    for norm in NORMS:
        step[norm] = norm_values(final, shallow[norm], candidates, q, temperature=t,
                                 gate=gate, in_scope=in_scope)
    if layers is not None:
        step["layers"] = {norm: entropy(layers[norm], t).tolist() for norm in NORMS}
    return step


def scope_flags(tokens: list[int], pieces: list[str], end, *, start: str = "inside",
                fmt=None) -> list[bool]:
    """Whether each response position is inside LED's thinking scope, as the engine decides
    it: position i is in scope until token i-1 ended it (``end``: a chatformat.ScopeEnd; the
    token that completes the marker is still in scope). None keeps everything in scope.
    ``start``: where the prompt left the response (chatformat.prompt_scope); with ``model``
    the scope opens after the token that completes ``fmt``'s start marker, first thing."""
    flags = []
    tail = ""
    inside, waiting = start == "inside", start == "model"
    for tok, piece in zip(tokens, pieces):
        flags.append(inside)
        if waiting:
            tail += piece
            opened = fmt.opening(tail)
            if opened is not None:
                waiting, inside, tail = False, opened, ""
            continue
        if inside and end is not None:
            tail, ended = end.advance(tail, tok, piece)
            inside = not ended
    return flags
