"""A multi-turn chat session over one engine slot: history, chat template, KV reuse.

Each turn renders the whole conversation with the model's template; the engine keeps the
longest common token prefix in its KV cache, so only the new part is evaluated. A reply cut
short (Ctrl-C, a full context) stays in the history as far as it got.
"""

from __future__ import annotations

from collections.abc import Iterator

from led_local.decoding.chatformat import MODEL, ChatFormat
from led_local.decoding.engine import Engine
from led_local.decoding.generate import Piece, stream_generate
from led_local.errors import ContextFullError, LedError


class ChatSession:
    """History plus generation settings; ``send`` streams the assistant's reply."""

    def __init__(self, engine: Engine, *, system: str | None = None, max_tokens: int = 1024,
                 seed: int = 0, format: ChatFormat | None = None) -> None:
        self.engine = engine
        self.system = system
        self.max_tokens = max_tokens
        self.seed = seed
        self.messages: list[dict[str, str]] = []
        self.turn = 0
        self.last_finish: str | None = None
        self.scope = MODEL  # where the last prompt left the reply (chatformat.prompt_scope)
        # how the model marks thinking (default: the engine's, as its chat template shows)
        self.format = format or engine.format

    def reset(self) -> None:
        """Forget the conversation (the KV cache is reused or dropped on the next turn)."""
        self.messages = []

    def _render(self) -> str:
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        return self.engine.rt.apply_chat_template(msgs)

    def send(self, text: str) -> Iterator[Piece]:
        """Add the user's message and stream the reply; the reply joins the history as it grows.

        Raises ContextFullError (the user message is dropped again) when the conversation no
        longer fits in the context.
        """
        self.messages.append({"role": "user", "content": text})
        try:
            prompt = self._render()
            tokens = self.engine.rt.tokenize(prompt, limit=self.engine.rt.n_ctx_seq)
        except ContextFullError:
            tokens = None
        except LedError:
            self.messages.pop()
            raise
        self.scope = self.format.prompt_scope(prompt)
        if tokens is None or len(tokens) >= self.engine.rt.n_ctx_seq:
            self.messages.pop()
            raise ContextFullError(
                f"the conversation{'' if tokens is None else f' ({len(tokens)} tokens)'} no "
                f"longer fits the context of {self.engine.rt.n_ctx_seq}; /reset to start over "
                "or raise `ctx`"
            )
        reply = {"role": "assistant", "content": ""}  # the text as generated
        self.messages.append(dict(reply))
        turn = len(self.messages) - 1
        self.turn += 1
        self.last_finish = None
        seed = (self.seed + self.turn) & 0xFFFFFFFF  # a fresh but reproducible stream per turn
        info: dict = {}
        for piece in stream_generate(self.engine, tokens, max_tokens=self.max_tokens, seed=seed,
                                     timing=info):
            reply["content"] += piece.text
            self.messages[turn] = self.format.assistant_turn(reply["content"], scope=self.scope)
            yield piece
        self.last_finish = info.get("finish_reason")

    def context_full(self) -> bool:
        """Whether the last reply stopped because the context ran out."""
        return self.engine.cached_len(0) + 1 >= self.engine.rt.n_ctx_seq
