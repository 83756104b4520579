"""The ``led`` method: Latent Exploration Decoding (docs/LED.md) in the engine.

Per step and sequence: the final layer's candidates and base token, then the gate; only the
rows that explore are projected (one LM-head product per configuration for all of them), so
projection never changes a token. The pure per-row functions are in ``samplers``.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from led_local.decoding.options import LED_NORM, TEMPERATURE, THINK_END, Option
from led_local.decoding.samplers import (
    LEDConfig,
    allowed,
    led_base,
    led_explore,
    led_explore_logprobs,
    log_probs_at,
    probs_at,
    top_candidates,
)
from led_local.decoding.unit import Batch, DecodingMethod
from led_local.errors import ConfigError

NAME = "led"
DEPTHS = Option("led_depths", int, 8, "Depths d (final layer plus d-1 shallower states).",
                low=2)
CANDIDATES = Option("led_candidates", int, 8, "Candidate tokens k from the final layer.", low=1)
EXPLOIT = Option("exploit", bool, True, "Gate exploration by the final layer's confidence "
                 "(off: always explore).", flag="--no-exploit", invert=True,
                 default_help="on")


class LED(DecodingMethod):
    name = NAME
    help = "Latent Exploration Decoding"
    options = (DEPTHS, CANDIDATES, EXPLOIT, LED_NORM)
    shared = (TEMPERATURE, THINK_END)
    records = NAME
    reads_states = True

    def configure(self, values, base):
        return {"led": LEDConfig(temperature=values["temperature"], depths=values["led_depths"],
                                 candidates=values["led_candidates"],
                                 exploit=values["exploit"], norm=values["led_norm"])}

    def values(self, cfg):
        led = cfg.led
        return {"led_depths": led.depths, "led_candidates": led.candidates,
                "exploit": led.exploit, "led_norm": led.norm}

    def params(self, cfg):
        d = asdict(cfg.led)
        d.pop("temperature")
        return {"temperature": cfg.temperature, **{f"led_{k}": v for k, v in d.items()},
                "led_think_end": cfg.think_end}

    def layers(self, info, cfg):
        return info.led_hidden_indices(cfg.led.depths)

    def layers_key(self, cfg):
        return (cfg.led,)

    def describe(self, cfg):
        return f"method {NAME}, led_depths {cfg.led.depths}"

    def check_model(self, info, cfg):
        info.check_led(cfg.led.depths)
        if cfg.led.candidates > info.n_vocab:
            raise ConfigError(CANDIDATES.name, f"must be <= the vocabulary {info.n_vocab}, got "
                              f"{cfg.led.candidates}")

    def graph_candidates(self, cfg):
        return cfg.led.candidates

    def wants_states(self, seq, cfg):
        return seq.in_scope  # outside the thinking scope LED is plain sampling

    def pick(self, engine, batch: Batch, idx):
        explore: dict = {}
        for i in idx:
            s, cfg = batch.seqs[i], batch.cfgs[i]
            led = cfg.led
            b = led_base(batch.final[i], temperature=cfg.temperature, k=led.candidates,
                         exploit=led.exploit, in_scope=s.in_scope, rng=s.rng)
            batch.tokens[i] = b.base
            if b.explore:
                explore.setdefault(cfg, []).append((i, b.candidates))
        for cfg, items in explore.items():  # one projection per configuration
            if engine.graph is not None:  # the graph holds the engine's own configuration
                for i, cand in items:
                    step = _explore_graph(engine, batch.rows[i], cand, batch.final[i],
                                          batch.seqs[i])
                    batch.tokens[i], batch.depths[i] = step.token, step.depth
                continue
            rows = [i for i, _ in items]
            z = np.empty((len(rows), cfg.led.depths, batch.final.shape[1]), np.float32)
            z[:, 0] = batch.final[rows]
            z[:, 1:] = engine.project(batch.states[rows][:, engine.columns(self.layers(
                engine.info, cfg))], norm=cfg.led.norm)
            for zi, (i, cand) in zip(z, items):
                step = led_explore(zi, cand, temperature=cfg.temperature, rng=batch.seqs[i].rng)
                batch.tokens[i], batch.depths[i] = step.token, step.depth

    def explore_chance(self, seq, cfg, final):
        """The gate of LED.md step 8: 1 - the final layer's top-1 probability at T (T = 0:
        at 1, as ``led_base`` draws it); 1 without exploitation; 0 outside the scope."""
        if not seq.in_scope:
            return 0.0
        if not cfg.led.exploit:
            return 1.0
        return 1.0 - float(probs_at(final, top_candidates(final, 1), cfg.temperature)[0])

    def record(self, seq, cfg, *, full=False):
        return {NAME: {"explored": seq.explored, "depths": seq.depths}}


def _explore_graph(engine, row: int, candidates: np.ndarray, final: np.ndarray, seq):
    """LED's exploration step for batch row ``row`` from the in-graph projection."""
    t = engine.cfg.temperature
    cands, deeper = engine.graph.logprobs(row, candidates, final)
    keep = np.isin(cands, allowed(final, cands))  # a grammar's forbidden tokens stay out
    cands, deeper = cands[keep], deeper[:, keep]
    logp = np.vstack([log_probs_at(final, cands, t)[None], deeper])
    return led_explore_logprobs(logp, cands, temperature=t, rng=seq.rng)


METHOD = LED()
