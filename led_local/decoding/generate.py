"""Single-sequence generation in layers: ``generate_step`` yields tokens, ``stream_generate``
yields text pieces, ``generate`` returns the whole record.

Prompts are token ids here; turning text into tokens (chat template or raw) is ``prompt_tokens``.
"""

from __future__ import annotations

import codecs
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from led_local.decoding.engine import Engine, Sequence
from led_local.errors import LedError


def prompt_tokens(engine: Engine, prompt: str, *, raw: bool = False,
                  system: str | None = None) -> list[int]:
    """Token ids of ``prompt``: through the model's chat template unless ``raw``."""
    limit = engine.rt.n_ctx_seq  # a prompt that cannot fit never reaches the tokenizer
    if raw:
        return engine.rt.tokenize(prompt, limit=limit)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return engine.rt.tokenize(engine.rt.apply_chat_template(messages), limit=limit)


def new_seed() -> int:
    """A fresh random seed, reported in every record so that a run can be repeated."""
    return secrets.randbits(32)


@dataclass
class Piece:
    """One streamed step: the new text, the token, and the LED depth (None: not explored)."""

    text: str
    token: int
    depth: int | None
    in_scope: bool  # emitted inside LED's thinking scope (up to and including the marker)
    latent: bool = False  # SwiReasoning: emitted but not fed back as itself (a latent step)


@dataclass
class Result:
    """A finished generation, as ``led-local generate --json`` prints it."""

    text: str
    tokens: list[int]
    finish_reason: str
    method: str
    params: dict
    seed: int
    depths: list[int | None]
    n_prompt: int
    prompt_s: float
    decode_s: float
    logprobs: list[float] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)  # the method's own report (hapo, swir)

    def to_json(self) -> dict:
        n = len(self.tokens)
        return {
            "text": self.text,
            "tokens": self.tokens,
            "n_tokens": n,
            "finish_reason": self.finish_reason,
            "method": self.method,
            "params": self.params,
            "seed": self.seed,
            "led": {"explored": sum(d is not None for d in self.depths), "depths": self.depths},
            **self.diagnostics,
            "timing": {
                "n_prompt": self.n_prompt,
                "prompt_s": round(self.prompt_s, 4),
                "decode_s": round(self.decode_s, 4),
                "tokens_per_s": round(n / self.decode_s, 2) if self.decode_s > 0 else None,
            },
        }


def generate_step(engine: Engine, tokens: list[int], *, max_tokens: int, seed: int,
                  timing: dict | None = None) -> Iterator[Sequence]:
    """Prefill ``tokens`` into slot 0, then yield the sequence after every new token."""
    if max_tokens < 1:
        raise LedError(f"`max_tokens` must be >= 1, got {max_tokens}")
    t0 = time.perf_counter()
    engine.prefill(0, tokens)
    t1 = time.perf_counter()
    seq = engine.new_sequence(0, seed=(seed,), max_tokens=max_tokens, prompt=tokens)
    engine.start(seq, len(tokens))
    if timing is not None:
        timing.update(prompt_s=t1 - t0, start=t1)
    while True:
        yield seq
        if seq.done:
            return
        engine.step([seq])


def stream_generate(engine: Engine, tokens: list[int], *, max_tokens: int, seed: int,
                    timing: dict | None = None) -> Iterator[Piece]:
    """Yield a Piece per emitted token; the text is UTF-8-safe (split characters wait).

    ``timing``, when given, receives prompt_s, start and, at the end, finish_reason.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    seen = 0
    seq = None
    for seq in generate_step(engine, tokens, max_tokens=max_tokens, seed=seed, timing=timing):
        while seen < len(seq.tokens):
            tok = seq.tokens[seen]
            text = decoder.decode(engine.rt.token_bytes(tok))
            in_scope = seq.scope_end is None or seen <= seq.scope_end
            lat = getattr(seq.trace, "latent", None)
            yield Piece(text, tok, seq.depths[seen], in_scope,
                        latent=bool(lat is not None and lat[seen]))
            seen += 1
    tail = decoder.decode(b"", final=True)
    if tail:
        yield Piece(tail, -1, None, False)
    if timing is not None and seq is not None:
        timing["finish_reason"] = seq.finish_reason


def generate(engine: Engine, tokens: list[int], *, max_tokens: int, seed: int,
             stop: Callable[[], bool] | None = None) -> Result:
    """Generate to the end and return the record (text, tokens, LED stats, timing); when
    ``stop()`` turns true (Ctrl-C), the tokens so far, with finish reason "interrupted"."""
    timing: dict = {}
    seq = None
    for seq in generate_step(engine, tokens, max_tokens=max_tokens, seed=seed,  # noqa: B007
                             timing=timing):
        if stop is not None and not seq.done and stop():
            seq.finish_reason = "interrupted"
            break
    decode_s = time.perf_counter() - timing["start"]
    text = b"".join(engine.rt.token_bytes(t) for t in seq.tokens).decode("utf-8", "replace")
    return Result(
        text=text, tokens=list(seq.tokens), finish_reason=seq.finish_reason,
        method=engine.cfg.method, params=engine.cfg.params(), seed=seed,
        depths=list(seq.depths), n_prompt=len(tokens), prompt_s=timing["prompt_s"],
        decode_s=decode_s, logprobs=list(seq.logprobs),
        diagnostics=engine.cfg.unit.record(seq, engine.cfg),
    )
