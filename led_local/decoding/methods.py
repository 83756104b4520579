"""Decoding methods: how one sequence picks its next token from a decode's output row.

``DecodeConfig`` describes a run (method and its parameters) and validates itself; a
``TokenPicker`` per sequence holds that sequence's own randomness (a numpy Generator for LED
and greedy-LED, a llama.cpp sampler chain for ``sample``), so a sequence's tokens never depend
on what shares its batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import llama_cpp
import numpy as np

from led_local.decoding.hapo import HAPOConfig
from led_local.decoding.samplers import LEDConfig
from led_local.decoding.swir import SwirConfig
from led_local.errors import LedError

METHODS = ("led", "sample", "greedy", "dola", "hapo", "swir")


@dataclass(frozen=True)
class DecodeConfig:
    """One decoding method and its parameters.

    sample: llama.cpp's chain temperature -> top-k -> top-p -> min-p -> dist (temperature first,
    as the reference's engine does); greedy: argmax of the final layer; led: LED.md; dola:
    DoLa contrast (Chuang et al. 2023) with ``dola_layers`` low or high; hapo: HAPO's
    entropy-adaptive temperature (``hapo``, decoding/hapo.py) around T0 = ``temperature``;
    swir: SwiReasoning's latent/explicit switching (``swir``, decoding/swir.py).
    """

    method: str = "led"
    temperature: float = 0.6
    top_k: int = 20
    top_p: float = 0.95
    min_p: float = 0.0
    led: LEDConfig = field(default_factory=LEDConfig)
    dola_layers: str = "high"
    think_end: str = "</think>"  # LED's scope ends here; solve reads the answer after it
    hapo: HAPOConfig = field(default_factory=HAPOConfig)
    swir: SwirConfig = field(default_factory=SwirConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LedError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise LedError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise LedError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise LedError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise LedError(f"--min-p must be in [0, 1], got {self.min_p}")
        if self.dola_layers not in ("low", "high"):
            raise LedError(f"--dola-layers must be low or high, got {self.dola_layers!r}")

    @property
    def needs_states(self) -> bool:
        return self.method in ("led", "dola")

    def params(self) -> dict:
        """The parameters that shape this method's output, for JSON records."""
        p: dict = {"temperature": self.temperature}
        if self.method in ("sample", "hapo", "swir"):
            p.update(top_k=self.top_k, top_p=self.top_p, min_p=self.min_p)
        if self.method == "hapo":
            h = self.hapo
            p.update(hapo_tau=h.tau, hapo_pivot=h.pivot, hapo_variant=h.variant)
            if h.rolling is not None:
                p.update(hapo_rolling=h.rolling)
            else:
                p.update(hapo_stats=h.stats.to_json() if h.stats else None)
        elif self.method == "led":
            d = asdict(self.led)
            d.pop("temperature")
            p.update({f"led_{k}": v for k, v in d.items()}, led_think_end=self.think_end)
        elif self.method == "dola":
            p.update(dola_layers=self.dola_layers)
        elif self.method == "swir":
            w = self.swir
            p.update(swir_window=w.window, swir_max_switch=w.max_switch, swir_alpha=w.alpha,
                     swir_beta=w.beta, swir_think_end=self.think_end)
            if w.top_mass < 1:  # the approximation; the exact mixture keeps old records' params
                p.update(swir_top_mass=w.top_mass)
        if self.method == "greedy":
            p = {"temperature": 0.0}
        return p


class LlamaSampler:
    """A llama.cpp sampler chain for ``--method sample``, owned and freed by this object."""

    def __init__(self, cfg: DecodeConfig, seed: int) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if cfg.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            add = llama_cpp.llama_sampler_chain_add
            add(chain, llama_cpp.llama_sampler_init_temp(cfg.temperature))
            if cfg.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(cfg.top_k))
            if cfg.top_p < 1:
                add(chain, llama_cpp.llama_sampler_init_top_p(cfg.top_p, 1))
            if cfg.min_p > 0:
                add(chain, llama_cpp.llama_sampler_init_min_p(cfg.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self.chain = chain

    def sample(self, ctx, row: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self.chain, ctx, row))

    def close(self) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

    def __del__(self) -> None:
        self.close()


def seed_sequence(*parts: int | str) -> np.random.SeedSequence:
    """A SeedSequence from (run seed, problem id, sample index, ...) that is stable across
    processes and platforms (strings are hashed by their UTF-8 bytes, not Python's hash)."""
    entropy: list[int] = []
    for p in parts:
        if isinstance(p, str):
            data = p.encode("utf-8")
            entropy.append(len(data))
            entropy.extend(data)
        else:
            entropy.append(int(p) & 0xFFFFFFFFFFFFFFFF)
    return np.random.SeedSequence(entropy)
