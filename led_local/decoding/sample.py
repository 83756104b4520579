"""The ``sample`` method: llama.cpp's own sampler chain, temperature -> top-k -> top-p ->
min-p -> dist (temperature first, as the reference's engine does), one chain per sequence."""

from __future__ import annotations

import llama_cpp
import numpy as np

from led_local.decoding.options import MIN_P, TEMPERATURE, THINK_END, TOP_K, TOP_P
from led_local.decoding.unit import DecodingMethod

NAME = "sample"


class LlamaSampler:
    """A llama.cpp sampler chain for one sequence, owned and freed by this object."""

    def __init__(self, cfg, seed: int) -> None:
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


class Sample(DecodingMethod):
    name = NAME
    help = "llama.cpp's sampler chain"
    shared = (TEMPERATURE, TOP_K, TOP_P, MIN_P, THINK_END)
    reads_logits = False  # the chain reads the logits in place

    def configure(self, values, base):
        return {}

    def values(self, cfg):
        return {}

    def params(self, cfg):
        return {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
                "min_p": cfg.min_p}

    def start(self, engine, seq, cfg, seed):
        seq.sampler = LlamaSampler(cfg, int(seed.generate_state(1, np.uint32)[0]))

    def pick(self, engine, batch, idx):
        for i in idx:
            batch.tokens[i] = batch.seqs[i].sampler.sample(engine.rt.ctx, batch.rows[i])


METHOD = Sample()
