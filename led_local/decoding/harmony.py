"""The ``harmony`` chat format of gpt-oss: a response is a run of messages, each
``<|channel|>NAME<|message|>BODY<|end|>`` (the later ones behind ``<|start|>assistant``).
The ``analysis`` channel is the thinking, ``final`` (and ``commentary``, the preambles) the
content. The last message ends at ``<|return|>`` or ``<|call|>``, which end generation and so
never reach the text.

LED's scope is the analysis message: from ``<|channel|>analysis<|message|>`` to its
``<|end|>``. An assistant turn goes back with its analysis in ``thinking`` and its final
message in ``content``, as the gpt-oss template wants (it refuses channel tags in content).
"""

from __future__ import annotations

import re

from led_local.decoding.chatformat import CLOSED, INSIDE, MODEL, ChatFormat, Split, held
from led_local.decoding.tool_calls import ToolCall

START, CHANNEL, MESSAGE, END = "<|start|>", "<|channel|>", "<|message|>", "<|end|>"
STOPS = ("<|return|>", "<|call|>")  # they end generation; in a resent text, they end a body
THINKING_CHANNEL = "analysis"
RECIPIENT = re.compile(r"to=functions\.([^\s<]+)")


class HarmonySplit:
    """Streams a harmony response: message headers are dropped, analysis bodies are
    reasoning and every other channel's body content. Text before any header (a model that
    ignores the format) is content. A message to ``functions.NAME`` is a tool call: its body
    goes to ``calls`` (the last one's end, ``<|call|>``, ends generation)."""

    def __init__(self, *, scope: str = MODEL) -> None:
        self.state = {INSIDE: "body", CLOSED: "body", MODEL: "begin"}[scope]
        self.channel = THINKING_CHANNEL if scope == INSIDE else "final"
        self.recipient: str | None = None
        self.calls: list[ToolCall] = []
        self._args = ""
        self._buf = ""

    def _close(self) -> None:
        """A message ended: a call's arguments become its call."""
        if self.recipient is not None:
            self.calls.append(ToolCall(self.recipient, self._args.strip()))
            self.recipient, self._args = None, ""

    def _route(self, out: Split, text: str) -> None:
        if self.recipient is not None:
            self._args += text
        elif self.channel == THINKING_CHANNEL:
            out.reasoning += text
        else:
            out.content += text

    def feed(self, text: str) -> Split:
        self._buf += text
        out = Split()
        while self._buf:
            if self.state == "begin":  # before a message: a header, or plain text
                stripped = self._buf.lstrip()
                if stripped.startswith(START) or stripped.startswith(CHANNEL):
                    self._buf, self.state = stripped, "header"
                elif START.startswith(stripped) or CHANNEL.startswith(stripped):
                    break
                else:
                    self.channel, self.state = "final", "body"
            elif self.state == "header":  # <|start|>assistant<|channel|>NAME ...<|message|>
                i = self._buf.find(MESSAGE)
                if i < 0:
                    break
                header = self._buf[:i]
                name = header.split(CHANNEL, 1)[1] if CHANNEL in header else "final"
                self.channel = name.split()[0] if name.split() else "final"
                to = RECIPIENT.search(header)
                self.recipient = to.group(1) if to else None
                self._buf, self.state = self._buf[i + len(MESSAGE):], "body"
            else:  # a message's body, to <|end|>
                ends = [(self._buf.find(m), m) for m in (END, *STOPS) if m in self._buf]
                if ends:
                    i, m = min(ends)
                    self._route(out, self._buf[:i])
                    self._close()
                    self._buf, self.state = self._buf[i + len(m):], "begin"
                    continue
                keep = held(self._buf, [END, *STOPS])
                self._route(out, self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                break
        return out

    def finish(self) -> Split:
        """Release what is held back: body text as its channel's, a cut header as nothing."""
        out = Split()
        if self.state == "body":
            self._route(out, self._buf)
            self._close()
        elif self.state == "begin":
            out.content = self._buf
        self._buf = ""
        return out


class Harmony(ChatFormat):
    name = "harmony"
    think_start = CHANNEL + THINKING_CHANNEL + MESSAGE
    think_end = END
    reasoning_field = "thinking"
    families = "gpt-oss"

    def matches(self, template: str) -> bool:
        return CHANNEL in template and MESSAGE in template

    def prompt_scope(self, prompt: str) -> str:
        tail = prompt.rstrip()
        if tail.endswith(self.think_start):
            return INSIDE
        if tail.endswith(MESSAGE):  # another channel's message (final) was opened
            return CLOSED
        return MODEL

    def opening(self, shown: str) -> bool | None:
        # the first message may come with or without its <|start|>assistant header
        text = shown.lstrip()
        if text.startswith(START):
            text = text[len(START):]
            if "assistant".startswith(text):
                return None
            if text.startswith("assistant"):
                text = text[len("assistant"):]
        if text.startswith(self.think_start):
            return True
        return None if self.think_start.startswith(text) else False

    def answer_header(self, scope: str) -> str:
        # a constrained answer is the final message; its header unless the prompt wrote it
        if scope == CLOSED:
            return ""
        return ('"<|start|>assistant"? "<|channel|>final" (" <|constrain|>" [a-z]+)? '
                '"<|message|>"')

    def splitter(self, *, scope: str = MODEL) -> HarmonySplit:
        return HarmonySplit(scope=scope)


FORMAT = Harmony()
