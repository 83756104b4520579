"""DoLa, decoding by contrasting layers (Chuang et al. 2023): pure numpy over one row's logits
and an explicit Generator, in two variants (``dola_variant``):

- ``hf`` (default): Hugging Face transformers' ``dola_layers``. The premature layers' logits
  are the LM head of their hidden states alone (transformers' ``lm_head``: no final norm
  unless ``--led-norm``, and none of what a model's forward adds after the head: no logit
  scale, no soft-capping); the premature layer is the candidate with the largest
  Jensen-Shannon divergence from the final layer; the scores are log p_final - log
  p_premature over the tokens whose final probability is at least 0.1 x the top one
  (relative-top filter), -inf elsewhere; then transformers' processors: the repetition
  penalty over the prompt and the response so far, and when sampling temperature, top-k
  (ties at the k-th kept), top-p and min-p.
- ``led-paper``: the DoLa baseline of the LED paper's code (led/decoding.py, ``dola_decoding``):
  every layer, final and premature, divided by T before the same contrast (no division at
  T = 0), the premature layers with the head's logit scale and soft-capping like the final
  one (their logits processor), layer c read from ``hidden_states[c - 1]`` (the input of
  layer c - 1, as their model code captures it), and the contrast sampled as it is: no
  top-k, top-p, min-p or repetition penalty.

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
from led_local.decoding.samplers import kth_largest
from led_local.decoding.unit import DecodingMethod
from led_local.errors import ConfigError

NAME = "dola"
VARIANTS = ("hf", "led-paper")
LAYERS = Option("dola_layers", str, "low", "Candidate premature layers (transformers' rule; "
                "low suits long reasoning).", choices=("low", "high"))
VARIANT = Option("dola_variant", str, "hf", "hf: Hugging Face transformers' DoLa; led-paper: "
                 "the LED paper's DoLa baseline (docs/methods.md).", choices=VARIANTS)
PENALTY = Option("repetition_penalty", float, 1.0, "transformers' repetition penalty over the "
                 "prompt and the response so far (1 = off; transformers advises >= 1.2 for "
                 "DoLa).", low=0, low_open=True, neutral=1.0)
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


def penalize(scores: np.ndarray, context: np.ndarray | None, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: the scores (V,) of every token id in
    ``context`` divided by ``penalty`` where positive, multiplied where negative."""
    if penalty == 1.0 or context is None or len(context) == 0:
        return scores
    ids = np.unique(np.asarray(context, np.int64))
    ids = ids[(ids >= 0) & (ids < scores.shape[-1])]  # -1: a fed vector, no token
    out = np.array(scores, dtype=np.float64)
    seen = out[ids]
    out[ids] = np.where(seen < 0, seen * penalty, seen / penalty)
    return out


def _draw(p: np.ndarray, order: np.ndarray, rng: np.random.Generator) -> int:
    """An inverse-CDF draw of ``order[i]`` with weights p (summing to 1)."""
    u = rng.random()
    return int(order[min(int(np.searchsorted(np.cumsum(p), u, side="right")), len(p) - 1)])


def pick(final: np.ndarray, premature: np.ndarray, cfg, rng: np.random.Generator, *,
         variant: str = "hf", penalty: float = 1.0, context: np.ndarray | None = None) -> int:
    """The next token from the final logits (V,) and the candidate premature logits (m, V)
    (``variant``, see the module docstring). cfg: temperature, top_k, top_p, min_p. The
    argmax when T = 0 (no draw), else one draw from ``rng``. ``context``: the prompt and
    response token ids the repetition penalty reads (hf)."""
    t = cfg.temperature
    if variant == "led-paper":
        if t > 0:
            final, premature = np.asarray(final) / t, np.asarray(premature) / t
        scores = contrast(final, premature)
        if t <= 0:
            return int(np.argmax(scores))
        order = np.flatnonzero(np.isfinite(scores))
        p = np.exp(scores[order] - scores[order].max())
        return _draw(p / p.sum(), order, rng)
    scores = penalize(contrast(final, premature), context, penalty)
    if t <= 0:
        return int(np.argmax(scores))
    z = scores / t
    if 0 < cfg.top_k < z.shape[-1]:  # every token tied with the k-th stays, as transformers
        kth = kth_largest(z, cfg.top_k)
        z = np.where(z >= kth, z, -np.inf)
    finite = np.flatnonzero(np.isfinite(z))  # (sorting only these: the same stable order)
    order = finite[np.argsort(-z[finite], kind="stable")]
    zs = z[order]
    p = np.exp(zs - zs[0])
    p /= p.sum()
    keep = len(p)
    if cfg.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), cfg.top_p, side="left")) + 1
    if cfg.min_p > 0:
        keep = min(keep, max(1, int((p >= cfg.min_p * p[0]).sum())))
    return _draw(p[:keep] / p[:keep].sum(), order[:keep], rng)


class DoLa(DecodingMethod):
    name = NAME
    help = "DoLa contrast"
    options = (LAYERS, VARIANT, PENALTY, LED_NORM)
    shared = (TEMPERATURE, TOP_K, TOP_P, MIN_P, THINK_END)
    defaults = {"top_k": 0, "top_p": 1.0}  # the contrast's own filter; transformers' warpers opt-in
    reads_states = True

    def configure(self, values, base):
        import dataclasses

        from led_local.decoding.samplers import LEDConfig

        variant = values["dola_variant"]
        if variant == "led-paper":
            for opt, off in ((TOP_K, 0), (TOP_P, 1.0), (MIN_P, 0.0), (PENALTY, 1.0)):
                if values[opt.name] != off:
                    raise ConfigError(opt.name, f"must be {off:g} with `dola_variant` "
                                      "led-paper (the LED paper's baseline samples the "
                                      f"contrast unfiltered), got {values[opt.name]:g}")
        led = LEDConfig() if base is None else base.led  # DoLa reads only its norm
        return dict(dola_layers=values["dola_layers"],
                    extra=((VARIANT.name, variant), (PENALTY.name, values["repetition_penalty"])),
                    led=dataclasses.replace(led, temperature=values["temperature"],
                                            norm=values["led_norm"]))

    def values(self, cfg):
        return {"dola_layers": cfg.dola_layers, "led_norm": cfg.led.norm,
                "dola_variant": cfg.option(VARIANT.name, VARIANT.default),
                "repetition_penalty": cfg.option(PENALTY.name, PENALTY.default)}

    def params(self, cfg):
        return {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
                "min_p": cfg.min_p, "dola_layers": cfg.dola_layers,
                "dola_variant": cfg.option(VARIANT.name, VARIANT.default),
                "repetition_penalty": cfg.option(PENALTY.name, PENALTY.default),
                "led_norm": cfg.led.norm}

    def layers(self, info, cfg):
        hidden = info.dola_hidden_indices(cfg.dola_layers)
        if cfg.option(VARIANT.name, VARIANT.default) == "led-paper":
            # their model code captures layer c at the top of iteration c - 1: its input
            return sorted({max(c - 1, 0) for c in hidden})
        return hidden

    def layers_key(self, cfg):
        return (cfg.dola_layers, cfg.option(VARIANT.name, VARIANT.default))

    def describe(self, cfg):
        return (f"method {NAME}, dola_layers {cfg.dola_layers}, dola_variant "
                f"{cfg.option(VARIANT.name, VARIANT.default)}")

    def check_model(self, info, cfg):
        info.check_led(2)

    def head_extras(self, cfg):
        # transformers' premature logits are lm_head(h) alone; the LED paper's code sends
        # every layer through the logits processor (logit scale, soft-capping)
        return cfg.option(VARIANT.name, VARIANT.default) == "led-paper"

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
                prem = engine.project(batch.states[rows][:, cols], norm=cfg.led.norm,
                                      extras=self.head_extras(cfg))
            variant = cfg.option(VARIANT.name, VARIANT.default)
            penalty = cfg.option(PENALTY.name, PENALTY.default)
            for p, i in zip(prem, rows):
                s = batch.seqs[i]
                context = engine.context(s) if penalty != 1.0 else None
                batch.tokens[i] = pick(batch.final[i], p, cfg, s.rng, variant=variant,
                                       penalty=penalty, context=context)


METHOD = DoLa()
