"""A decoding method added as one module and one registry line, to show that nothing else
needs to change: ``lens`` emits the top-1 token of the LM head applied to the hidden state at
LED depth ``lens_depth`` (the state below the final layer's, by default)."""

from __future__ import annotations

import numpy as np

from led_local.decoding import registry
from led_local.decoding.options import THINK_END, Option
from led_local.decoding.unit import DecodingMethod

DEPTH = Option("lens_depth", int, 1, "Depth j >= 1 whose projected state picks the token.",
               low=1)


class Lens(DecodingMethod):
    name = "lens"
    help = "top-1 of a shallower depth"
    options = (DEPTH,)
    shared = (THINK_END,)
    reads_states = True

    def layers(self, info, cfg):
        return info.led_hidden_indices(cfg.option(DEPTH.name, 1) + 1)[-1:]

    def check_model(self, info, cfg):
        info.check_led(cfg.option(DEPTH.name, 1) + 1)

    def norm(self, cfg):
        return False

    def wants_states(self, seq, cfg):
        return True

    def params(self, cfg):
        return {"temperature": 0.0, "lens_depth": cfg.option(DEPTH.name, 1)}

    def pick(self, engine, batch, idx):
        for i in idx:
            cols = engine.columns(self.layers(engine.info, batch.cfgs[i]))
            z = engine.project(batch.states[[i]][:, cols], norm=False)
            batch.tokens[i] = int(np.argmax(z[0, 0]))


METHOD = registry.register(Lens())
