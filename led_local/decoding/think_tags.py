"""Chat formats that mark thinking with a pair of tags: ``<think>...</think>`` (``deepseek``:
DeepSeek-R1, Qwen3, QwQ, GLM, Kimi, SmolLM3, Nemotron and the families that copied them) and
the same shape with other tags (Seed-OSS, Magistral/Ministral, Command A, Granite, Apriel,
Gemma 4, Hunyuan, Kimi-K3).

A ``TagFormat`` is data: its two markers, the strings of a chat template that show it, and
the wrappers some families put around the answer (Granite's ``<response>...</response>``),
which are dropped from the content.
"""

from __future__ import annotations

from led_local.decoding.chatformat import CLOSED, INSIDE, MODEL, ChatFormat, Split, held


class Unwrap:
    """Streams content with the given marker strings removed (a partial one held back)."""

    def __init__(self, markers: tuple[str, ...]) -> None:
        self.markers = markers
        self._buf = ""

    def feed(self, text: str) -> str:
        if not self.markers:
            return text
        self._buf += text
        for m in self.markers:
            self._buf = self._buf.replace(m, "")
        keep = held(self._buf, list(self.markers))
        out, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
        return out

    def finish(self) -> str:
        out, self._buf = self._buf, ""
        return out


class TagSplit:
    """The text between ``start`` and ``end`` is reasoning, the rest content.

    ``scope`` says where the prompt left the response: ``inside`` (the prompt opened the
    block), ``closed`` (the prompt closed it: all is content) or ``model`` (a block counts
    only when the response opens with it, after whitespace). The markers themselves and the
    whitespace right after the block are dropped, and so are the answer's ``wrappers``.
    """

    def __init__(self, start: str, end: str, *, scope: str = MODEL,
                 wrappers: tuple[str, ...] = ()) -> None:
        self.start, self.end = start, end
        self.state = {INSIDE: "think", CLOSED: "content", MODEL: "start"}[scope]
        self._buf = ""
        self._unwrap = Unwrap(wrappers)

    def feed(self, text: str) -> Split:
        self._buf += text
        out = Split()
        while self._buf:
            if self.state == "start":
                stripped = self._buf.lstrip()
                if stripped.startswith(self.start):
                    self._buf = stripped[len(self.start):]
                    self.state = "think"
                elif self.start.startswith(stripped):  # may still become the marker
                    break
                else:
                    self.state = "content"
            elif self.state == "think":
                i = self._buf.find(self.end)
                if i >= 0:
                    out.reasoning += self._buf[:i]
                    self._buf = self._buf[i + len(self.end):]
                    self.state = "after"
                    continue
                keep = held(self._buf, [self.end])
                out.reasoning += self._buf[:len(self._buf) - keep]
                self._buf = self._buf[len(self._buf) - keep:]
                break
            elif self.state == "after":
                self._buf = self._buf.lstrip()
                if self._buf:
                    self.state = "content"
            else:
                out.content += self._unwrap.feed(self._buf)
                self._buf = ""
        return out

    def finish(self) -> Split:
        """Release a held-back partial marker as the text it is."""
        out = Split()
        if self.state == "think":
            out.reasoning = self._buf
        elif self.state in ("start", "content"):
            out.content = self._unwrap.feed(self._buf) + self._unwrap.finish()
        self._buf = ""
        return out


class TagFormat(ChatFormat):
    """Thinking between ``think_start`` and ``think_end``; detected when the chat template
    holds every string of ``shows`` and none of ``unless``."""

    def __init__(self, name: str, start: str, end: str, *, shows: tuple[str, ...] = (),
                 unless: tuple[str, ...] = (), wrappers: tuple[str, ...] = (),
                 families: str = "") -> None:
        self.name = name
        self.think_start, self.think_end = start, end
        self.shows = shows or (start,)
        self.unless = unless
        self.wrappers = wrappers
        self.families = families

    def matches(self, template: str) -> bool:
        return (all(s in template for s in self.shows)
                and not any(s in template for s in self.unless))

    def prompt_scope(self, prompt: str) -> str:
        tail = prompt.rstrip()
        if tail.endswith(self.think_end):
            return CLOSED
        if tail.endswith(self.think_start.rstrip()):
            return INSIDE
        return MODEL

    def splitter(self, *, scope: str = MODEL) -> TagSplit:
        return TagSplit(self.think_start, self.think_end, scope=scope, wrappers=self.wrappers)


DEEPSEEK = TagFormat(
    "deepseek", "<think>", "</think>",
    families="DeepSeek-R1/V3.1+, Qwen3, QwQ, GLM-4.5+, Kimi-K2-Thinking, SmolLM3, Nemotron, "
    "MiniMax-M2, StepFun, MiniCPM")
GRANITE = TagFormat(
    "granite", "<think>", "</think>", shows=("<think></think>", "<response></response>"),
    wrappers=("<response>", "</response>"), families="Granite 3.3 (thinking=true)")
SEED = TagFormat("seed", "<seed:think>", "</seed:think>", families="Seed-OSS")
MISTRAL = TagFormat("mistral-think", "[THINK]", "[/THINK]",
                    families="Magistral, Ministral 3 Reasoning")
COHERE = TagFormat("cohere", "<|START_THINKING|>", "<|END_THINKING|>",
                   wrappers=("<|START_RESPONSE|>", "<|END_RESPONSE|>"),
                   families="Command A Reasoning, Command R7B")
APRIEL = TagFormat("apriel", "Here are my reasoning steps:", "[BEGIN FINAL RESPONSE]",
                   shows=("[BEGIN FINAL RESPONSE]",), wrappers=("[END FINAL RESPONSE]",),
                   families="Apriel 1.5/1.6 Thinker")
GEMMA4 = TagFormat("gemma4", "<|channel>thought", "<channel|>", families="Gemma 4")
HUNYUAN = TagFormat("hunyuan", "<think:opensource>", "</think:opensource>",
                    shows=("<think{}>", ":opensource"),
                    families="Hunyuan (Hy3)")
KIMI3 = TagFormat("kimi-k3", "<|open|>think<|sep|>", "<|close|>think<|sep|>",
                  shows=("<|open|>", "<|close|>", "think"),
                  wrappers=("<|open|>response<|sep|>", "<|close|>response<|sep|>"),
                  families="Kimi-K3")

FORMATS = (GRANITE, DEEPSEEK, SEED, MISTRAL, COHERE, APRIEL, GEMMA4, HUNYUAN, KIMI3)
