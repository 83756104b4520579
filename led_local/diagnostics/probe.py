"""The teacher-forced pass of ``inspect``: logits and hidden states at every response position.

A ``Probe`` loads the model with the same pieces decoding uses (``Runtime``, the hidden-state
capture, the quantized ``LMHead``) and feeds prompt and response through llama.cpp once: the
prompt without outputs, then the response in chunks whose every token is an output, so each
position gives llama.cpp's own logits (depth 0) and the captured block outputs. Each position's
states are projected twice, without and with the final norm (ln0 and ln1), then dropped:
memory stays at one chunk of logits and one position's projections, whatever the length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from led_local.decoding.chatformat import ScopeEnd
from led_local.decoding.samplers import LEDConfig
from led_local.diagnostics.inspect import NORMS, analyse_position, scope_flags
from led_local.diagnostics.sources import Item
from led_local.errors import LedError
from led_local.llama.capture import make_capture
from led_local.llama.gguf_info import ModelInfo
from led_local.llama.head import LMHead
from led_local.llama.runtime import Runtime, default_threads

CHUNK = 32  # response tokens per decode: llama.cpp keeps CHUNK x V output logits


@dataclass
class Position:
    """One response position: the logits that predict ``token`` and their projections.

    final: (V,); shallow[norm]: (d-1, V) LED depths 1..d-1; layers[norm]: (L, V) the outputs
    of blocks 0..L-1 through the head, or None without ``all_layers``.
    """

    token: int
    final: np.ndarray
    shallow: dict[str, np.ndarray]
    layers: dict[str, np.ndarray] | None


class Probe:
    """A model loaded for analysis. ``led`` gives d and k; ``all_layers`` also captures every
    block's output (the eval-callback capture: the layer-input export has no output of the
    last block). n_ctx bounds prompt + response; threads, capture, verbose as for decoding."""

    def __init__(self, info: ModelInfo, led: LEDConfig, *, all_layers: bool = False,
                 n_ctx: int = 4096, threads: int | None = None, capture: str = "auto",
                 verbose: bool = False) -> None:
        info.check_led(led.depths)
        if led.candidates > info.n_vocab:
            raise LedError(f"`led_candidates` must be <= the vocabulary {info.n_vocab}, "
                           f"got {led.candidates}")
        if all_layers and capture == "layer-inp":
            raise LedError("`all_layers` needs `capture` callback or auto: the layer-input "
                           "export has no output of the last block")
        self.info = info
        depth_layers = info.led_hidden_indices(led.depths)  # h = L-2, ..., L-d
        every = list(range(1, info.n_layer + 1)) if all_layers else []  # l_out-0..l_out-(L-1)
        captured = sorted(set(depth_layers) | set(every))
        row = {h: i for i, h in enumerate(captured)}
        self._depth_rows = [row[h] for h in depth_layers]
        self._layer_rows = [row[h] for h in every] if all_layers else None
        self.capture = make_capture(info, captured,
                                    prefer="callback" if all_layers else capture)
        self.head = LMHead(info, threads=threads or default_threads())
        self.rt = Runtime(info.path, n_ctx=n_ctx, n_threads=threads, verbose=verbose, info=info,
                          eval_callback=self.capture.callback)
        self.capture.attach(self.rt)

    def close(self) -> None:
        self.rt.close()
        self.head.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_fits(self, n_prompt: int, n_response: int) -> None:
        """Refuse a prompt and response that together exceed the context."""
        if n_prompt + n_response > self.rt.n_ctx_seq:
            raise LedError(f"the prompt ({n_prompt} tokens) and the response ({n_response} "
                           f"tokens) do not fit in the context ({self.rt.n_ctx_seq}); "
                           "raise `ctx`")

    def positions(self, prompt: list[int], response: list[int]) -> Iterator[Position]:
        """Teacher-force ``response`` after ``prompt``; one Position per response token, in
        order (position i holds the logits after prompt + response[:i])."""
        if not prompt:
            raise LedError("the prompt is empty")
        self.check_fits(len(prompt), len(response))
        rt = self.rt
        rt.seq_rm(0, -1, -1)
        head = prompt[:-1]
        for start in range(0, len(head), rt.n_batch):
            chunk = head[start:start + rt.n_batch]
            self.capture.begin(np.zeros(0, np.int64))
            rt.decode(chunk, range(start, start + len(chunk)), [0] * len(chunk),
                      [False] * len(chunk))
        fed = [prompt[-1], *response[:-1]]
        offset = len(prompt) - 1
        for start in range(0, len(response), CHUNK):
            chunk = fed[start:start + CHUNK]
            n = len(chunk)
            self.capture.begin(np.arange(n, dtype=np.int64))
            rt.decode(chunk, range(offset + start, offset + start + n), [0] * n, [True] * n)
            states = self.capture.collect()  # (n, captured, n_embd)
            for i in range(n):
                yield self._project(response[start + i], rt.logits(i), states[i])

    def _project(self, token: int, final: np.ndarray, states: np.ndarray) -> Position:
        """Both norm settings' projections of one position's states (m, n_embd)."""
        shallow: dict[str, np.ndarray] = {}
        layers: dict[str, np.ndarray] | None = {} if self._layer_rows is not None else None
        for norm in NORMS:
            z = self.head.project(states, norm=norm == "ln1")
            shallow[norm] = z[self._depth_rows]
            if layers is not None:
                layers[norm] = z[self._layer_rows]
        return Position(token, final, shallow, layers)


def analyse(probe: Probe, items: list[Item], *, led: LEDConfig, think_end: str,
            on_position: Callable[[], None] = lambda: None, fmt=None) -> list[dict]:
    """inspect's responses: for each item its label, prompt length, response tokens and one
    step per response position (``analyse_position``); every item is checked to fit the
    context before any is decoded. ``on_position`` is called after each position. ``fmt``
    (a ChatFormat) says where each prompt leaves the response, as the engine's ``scope``:
    with ``think_end`` its own marker, the prompt decides; otherwise all starts in scope."""
    for item in items:
        probe.check_fits(len(item.prompt), len(item.response))
    end = ScopeEnd.of(probe.rt, think_end)
    out = []
    for item in items:
        start = "inside"
        if fmt is not None and fmt.think_start and think_end == fmt.think_end:
            tail = b"".join(probe.rt.token_bytes(t) for t in item.prompt[-32:])
            start = fmt.prompt_scope(tail.decode("utf-8", "replace"))
        flags = scope_flags(item.response, [probe.rt.token_text(t) for t in item.response],
                            end, start=start, fmt=fmt)
        steps = []
        for pos, flag in zip(probe.positions(item.prompt, item.response), flags):
            steps.append(analyse_position(pos.final, pos.shallow, token=pos.token, led=led,
                                          in_scope=flag, layers=pos.layers))
            on_position()
        out.append({**item.label, "prompt_tokens": len(item.prompt),
                    "tokens": list(item.response), "steps": steps})
    return out
