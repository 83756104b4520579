"""The ``deepseek`` chat format: thinking inside ``<think>...</think>`` (DeepSeek-R1, Qwen3,
QwQ and the families that copied them)."""

from __future__ import annotations

from led_local.decoding.chatformat import ChatFormat, Split, held

THINK_START = "<think>"
THINK_END = "</think>"


class ThinkTagSplit:
    """The text inside ``<think>...</think>`` is reasoning.

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
                keep = held(self._buf, [THINK_END])
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


class ThinkTags(ChatFormat):
    name = "deepseek"
    think_end = THINK_END

    def matches(self, template: str) -> bool:
        return THINK_START in template

    def starts_inside(self, prompt: str) -> bool:
        return prompt.rstrip().endswith(THINK_START)

    def splitter(self, *, thinking: bool = False) -> ThinkTagSplit:
        return ThinkTagSplit(thinking=thinking)

    def opens(self, shown: str) -> bool:
        """Whether a response shown so far opens a thinking block itself."""
        return shown.lstrip().startswith(THINK_START)



FORMAT = ThinkTags()
