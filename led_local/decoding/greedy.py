"""The ``greedy`` method: the argmax of the final layer (ties: the lowest id)."""

from __future__ import annotations

import numpy as np

from led_local.decoding.options import TEMPERATURE, THINK_END
from led_local.decoding.unit import DecodingMethod

NAME = "greedy"


class Greedy(DecodingMethod):
    name = NAME
    help = "argmax"
    # a temperature is accepted (clients send one) and changes nothing: records say 0
    shared = (TEMPERATURE, THINK_END)

    def configure(self, values, base):
        return {}

    def values(self, cfg):
        return {}

    def params(self, cfg):
        return {"temperature": 0.0}

    def pick(self, engine, batch, idx):
        for i in idx:
            batch.tokens[i] = int(np.argmax(batch.final[i]))

    def logprob_temperature(self, cfg):
        return 0.0


METHOD = Greedy()
