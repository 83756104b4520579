"""DoLa, decoding by contrasting layers (Chuang et al. 2023), as Hugging Face transformers'
``dola_layers`` implements it: pure numpy over one row's logits and an explicit Generator.

The premature layer is the candidate with the largest Jensen-Shannon divergence from the
final layer; the next-token scores are log p_final - log p_premature over the tokens whose
final probability is at least 0.1 x the top one (relative-top filter), -inf elsewhere.
transformers averages the divergence over the batch; led-local picks per row, so a sequence's
tokens do not depend on what shares its batch (identical for a batch of one).
"""

from __future__ import annotations

import numpy as np

from led_local.decoding.options import (
    LED_NORM,
    MIN_P,
    TEMPERATURE,
    THINK_END,
    TOP_K,
    TOP_P,
    Option,
)
from led_local.decoding.unit import DecodingMethod

NAME = "dola"
LAYERS = Option("dola_layers", str, "high", "Candidate premature layers.",
                choices=("low", "high"))
RELATIVE_TOP = 0.1
BASE_FILTER_VALUE = -1e-3


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def js_divergences(final: np.ndarray, premature: np.ndarray) -> np.ndarray:
    """transformers' JS divergence of each premature row (m, V) from the final row (V,):
    0.5 (KL(M || final) + KL(M || premature)) averaged over the vocabulary, M the mean."""
    lf = _log_softmax(final)[None, :]
    lp = _log_softmax(premature)
    m = 0.5 * (np.exp(lf) + np.exp(lp))
    log_m = np.log(np.where(m > 0, m, 1.0))
    # a token a grammar forbids (-inf final logit) adds nothing, instead of an infinity
    kl1 = np.where(np.isfinite(lf), m * (log_m - lf), 0.0).mean(axis=-1)
    kl2 = (m * (log_m - lp)).mean(axis=-1)
    return 0.5 * (kl1 + kl2)


def contrast(final: np.ndarray, premature: np.ndarray) -> np.ndarray:
    """DoLa scores (V,) from the final logits (V,) and the candidate premature logits (m, V)."""
    prem = premature[int(np.argmax(js_divergences(final, premature)))] if len(premature) > 1 \
        else premature[0]
    lf = _log_softmax(final)
    lb = _log_softmax(prem)
    thresh = min(lf.max() + np.log(RELATIVE_TOP), np.sort(lf)[-1])
    low = lf < thresh
    lf[low] = -np.inf
    lb[low] = BASE_FILTER_VALUE
    return lf - lb


def pick(final: np.ndarray, premature: np.ndarray, cfg, rng: np.random.Generator) -> int:
    """The next token: argmax of the DoLa scores when T = 0, else a draw after temperature,
    top-k, top-p and min-p (the warpers transformers applies after DoLa when sampling)."""
    scores = contrast(final, premature)
    if cfg.temperature <= 0:
        return int(np.argmax(scores))
    z = scores / cfg.temperature
    order = np.argsort(-z, kind="stable")
    if cfg.top_k > 0:
        order = order[: cfg.top_k]
    zs = z[order]
    p = np.exp(zs - zs[0])
    p /= p.sum()
    keep = len(p)
    if cfg.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), cfg.top_p, side="left")) + 1
    if cfg.min_p > 0:
        keep = min(keep, max(1, int((p >= cfg.min_p * p[0]).sum())))
    p = p[:keep] / p[:keep].sum()
    u = rng.random()
    return int(order[min(int(np.searchsorted(np.cumsum(p), u, side="right")), keep - 1)])


class DoLa(DecodingMethod):
    name = NAME
    help = "DoLa contrast"
    options = (LAYERS, LED_NORM)
    shared = (TEMPERATURE, TOP_K, TOP_P, MIN_P, THINK_END)
    reads_states = True

    def configure(self, values, base):
        import dataclasses

        from led_local.decoding.samplers import LEDConfig

        led = LEDConfig() if base is None else base.led  # DoLa reads only its norm
        return dict(dola_layers=values["dola_layers"],
                    led=dataclasses.replace(led, temperature=values["temperature"],
                                            norm=values["led_norm"]))

    def values(self, cfg):
        return {"dola_layers": cfg.dola_layers, "led_norm": cfg.led.norm}

    def params(self, cfg):
        return {"temperature": cfg.temperature, "dola_layers": cfg.dola_layers}

    def layers(self, info, cfg):
        return info.dola_hidden_indices(cfg.dola_layers)

    def layers_key(self, cfg):
        return (cfg.dola_layers,)

    def describe(self, cfg):
        return f"method {NAME}, dola_layers {cfg.dola_layers}"

    def check_model(self, info, cfg):
        info.check_led(2)

    def wants_states(self, seq, cfg):
        return True

    def pick(self, engine, batch, idx):
        groups: dict = {}
        for i in idx:
            groups.setdefault(batch.cfgs[i], []).append(i)
        for cfg, rows in groups.items():
            if engine.graph is not None:
                prem = np.stack([engine.graph.logits(batch.rows[i]) for i in rows])
            else:
                cols = engine.columns(self.layers(engine.info, cfg))
                prem = engine.project(batch.states[rows][:, cols], norm=cfg.led.norm)
            for p, i in zip(prem, rows):
                batch.tokens[i] = pick(batch.final[i], p, cfg, batch.seqs[i].rng)


METHOD = DoLa()
