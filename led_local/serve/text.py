"""A choice's text as it streams out: UTF-8 safe, stop strings held back, thinking split off.

``TextStream`` takes the bytes of each new token and hands back only text that can no longer
change: a UTF-8 character split across tokens waits for its last byte, and the end of the text
that could still grow into a stop string waits until it cannot. When a stop string appears the
text ends just before it. The chat format's splitter (``decoding.chatformat``) then routes the
released text to ``reasoning`` or ``content``, holding back a partial marker the same way.
"""

from __future__ import annotations

import codecs

from led_local.decoding.chatformat import held as _held


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
