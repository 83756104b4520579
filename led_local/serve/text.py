"""A choice's text as it streams out: UTF-8 safe, stop strings held back, thinking split off.

``TextStream`` takes the bytes of each new token and hands back only text that can no longer
change: a UTF-8 character split across tokens waits for its last byte, and the end of the text
that could still grow into a stop string waits until it cannot. When a stop string appears the
text ends just before it. ``ReasoningSplit`` routes the released text to ``reasoning`` (inside
``<think>...</think>``) or ``content``, holding back a partial marker the same way.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"


def _held(text: str, markers: list[str]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of one of ``markers``."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


class TextStream:
    """Incremental detokenised text of one choice with stop strings (``stop``, may be empty)."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # everything decoded so far (up to a stop string once one matched)
        self.sent = 0  # how much of ``text`` has been released
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the newly releasable text ('' if none)."""
        if self.stopped:
            return ""
        searched = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += self._decoder.decode(data)
        hits = [i for i in (self.text.find(s, searched) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
            return self._release(len(self.text))
        return self._release(len(self.text) - _held(self.text[self.sent:], self.stop))

    def finish(self) -> str:
        """The generation ended: release whatever was held back (an unfinished character
        becomes U+FFFD, as everywhere else in led-local)."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        upto = max(upto, self.sent)
        out = self.text[self.sent:upto]
        self.sent = upto
        return out


@dataclass
class Split:
    """Released text divided into reasoning (thinking) and content."""

    reasoning: str = ""
    content: str = ""


class ReasoningSplit:
    """DeepSeek-style reasoning format: the text inside ``<think>...</think>`` is reasoning.

    ``thinking`` says whether the prompt already opened the block (templates that end with
    ``<think>``); otherwise a block counts only when the response opens with it (after
    whitespace). The markers themselves and the whitespace right after the block are dropped.
    """

    def __init__(self, *, thinking: bool = False) -> None:
        self.state = "think" if thinking else "start"
        self._buf = ""

    def feed(self, text: str) -> Split:
        self._buf += text
        out = Split()
        while self._buf:
            if self.state == "start":
                stripped = self._buf.lstrip()
                if stripped.startswith(THINK_START):
                    self._buf = stripped[len(THINK_START):]
                    self.state = "think"
                elif THINK_START.startswith(stripped):  # may still become the marker
                    break
                else:
                    self.state = "content"
            elif self.state == "think":
                i = self._buf.find(THINK_END)
                if i >= 0:
                    out.reasoning += self._buf[:i]
                    self._buf = self._buf[i + len(THINK_END):]
                    self.state = "after"
                    continue
                keep = _held(self._buf, [THINK_END])
                out.reasoning += self._buf[:len(self._buf) - keep]
                self._buf = self._buf[len(self._buf) - keep:]
                break
            elif self.state == "after":
                self._buf = self._buf.lstrip()
                if self._buf:
                    self.state = "content"
            else:
                out.content += self._buf
                self._buf = ""
        return out

    def finish(self) -> Split:
        """Release a held-back partial marker as the text it is."""
        out = Split()
        if self.state == "think":
            out.reasoning = self._buf
        elif self.state in ("start", "content"):
            out.content = self._buf
        self._buf = ""
        return out


class NoSplit:
    """``--reasoning-format none``: everything is content."""

    def feed(self, text: str) -> Split:
        return Split(content=text)

    def finish(self) -> Split:
        return Split()
