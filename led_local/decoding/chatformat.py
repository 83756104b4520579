"""What a chat format is: how a model family marks thinking, and what follows from it.

A ``ChatFormat`` knows, from its markers: whether a rendered prompt leaves the response
inside thinking, how streamed text divides into reasoning and content (incrementally, a
partial marker held back), where LED's exploration scope ends, and how an assistant turn goes
back into the messages for the next render. One module per format, a line in ``FORMATS``;
``detect`` picks a model's format from its GGUF (the chat template's text), and every command
that renders a chat can override it by name (``reasoning_format``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from led_local.errors import ConfigError
from led_local.llama.grammar import Grammar


@dataclass
class Split:
    """Released text divided into reasoning (thinking) and content."""

    reasoning: str = ""
    content: str = ""


def held(text: str, markers: list[str]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of one of ``markers``."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


class PlainSplit:
    """Everything is content."""

    def feed(self, text: str) -> Split:
        return Split(content=text)

    def finish(self) -> Split:
        return Split()


# Where a rendered prompt leaves the response (``ChatFormat.prompt_scope``).
INSIDE = "inside"  # the prompt opened thinking: the response starts inside it
CLOSED = "closed"  # the prompt closed it (thinking switched off): nothing is thinking
MODEL = "model"  # the model may open it with the format's start marker, first thing


class ChatFormat:
    """A format without thinking markers: all text is content, LED's scope is the whole
    response. ``name``: its name for ``reasoning_format``; ``think_start``/``think_end``: the
    markers that open and end thinking ('': none); ``reasoning_field``: the message field
    the family's templates read an earlier turn's reasoning from."""

    name = "none"
    think_start = ""
    think_end = ""
    reasoning_field = "reasoning_content"
    families = "models without thinking markers"

    def matches(self, template: str) -> bool:
        """Whether a chat template's text writes this format."""
        return False

    def prompt_scope(self, prompt: str) -> str:
        """Where the rendered ``prompt`` leaves the response: INSIDE, CLOSED or MODEL."""
        return INSIDE

    def opening(self, shown: str) -> bool | None:
        """Whether a response whose text so far is ``shown`` has opened thinking itself (the
        start marker first, after whitespace): True, False, or None while it still may."""
        if not self.think_start:
            return False
        text = shown.lstrip()
        if text.startswith(self.think_start):
            return True
        return None if self.think_start.startswith(text) else False

    def splitter(self, *, scope: str = MODEL):
        """A fresh incremental splitter (``feed(text) -> Split``, ``finish() -> Split``) of one
        response; ``scope``: where the prompt left it (``prompt_scope``)."""
        return PlainSplit()

    def split(self, text: str, *, scope: str = MODEL) -> Split:
        """A whole response divided into reasoning and content."""
        s = self.splitter(scope=scope)
        a, b = s.feed(text), s.finish()
        return Split(a.reasoning + b.reasoning, a.content + b.content)

    # -- constrained replies -------------------------------------------------------------
    def thinking_rule(self, scope: str) -> str:
        """GBNF expression of the thinking a constrained reply may write before its answer,
        where the prompt left it (``scope``) open: '' when it cannot think. It reads the rule
        ``THINK_BODY`` (``THINK_RULES``)."""
        if not self.think_start or scope == CLOSED:
            return ""
        block = f"{THINK_BODY} {gbnf_literal(self.think_end)} [ \\t\\n]*"
        return block if scope == INSIDE else f"({gbnf_literal(self.think_start)} {block})?"

    def answer_header(self, scope: str) -> str:
        """GBNF expression of what comes between the thinking and a constrained answer
        ('': nothing; harmony: the final message's header)."""
        return ""

    def constrain(self, grammar: Grammar, scope: str, *, header: bool = True) -> Grammar:
        """The grammar of a whole reply whose answer ``grammar`` constrains (a JSON schema, a
        GBNF grammar): the thinking this format writes may come first, unconstrained, where
        the prompt leaves it open, so a reasoning model still thinks; then the answer's
        header (``header``; tool calls write their own). A grammar that spans the whole reply
        already (``whole``) is returned as it is."""
        if grammar.whole:
            return grammar
        parts = (self.thinking_rule(scope), self.answer_header(scope) if header else "")
        prefix = " ".join(x for x in parts if x)
        return grammar.after(prefix, THINK_RULES) if prefix else replace(grammar, whole=True)

    def assistant_turn(self, text: str, *, scope: str = MODEL) -> dict[str, str]:
        """The message that puts a reply (its text as generated) back into the conversation
        for the next render: its content, and its reasoning in ``reasoning_field`` (the
        families' templates drop or keep it as they do for their own turns)."""
        return self.assistant_message(self.split(text, scope=scope))

    def assistant_message(self, split: Split) -> dict[str, str]:
        """The assistant message of a reply divided into reasoning and content."""
        msg = {"role": "assistant", "content": split.content}
        if split.reasoning:
            msg[self.reasoning_field] = split.reasoning
        return msg


PLAIN = ChatFormat()

THINK_BODY = "led-think-body"
THINK_RULES = f"{THINK_BODY} ::= [^\\x00]*"


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal (its escapes are JSON's)."""
    return json.dumps(text)


class ScopeEnd:
    """Where LED's exploration scope ends in a response: right after the token that completes
    ``marker``. When the marker is one added token of the vocabulary (``token``: Qwen3's
    ``</think>``, which the tokenizer never builds out of other text), that token alone ends
    it (token level); otherwise the first token after which the response's text holds the
    marker does (text level, ``tail`` carrying the text seen so far)."""

    def __init__(self, marker: str, token: int | None = None) -> None:
        self.marker = marker
        self.token = token

    @classmethod
    def of(cls, rt, marker: str) -> ScopeEnd | None:
        """The scope end of ``marker`` in the vocabulary of Runtime ``rt`` (None: ``''``, the
        scope is the whole response)."""
        if not marker:
            return None
        ids = rt.tokenize(marker, special=True, bos=False)
        return cls(marker, ids[0] if len(ids) == 1 and rt.is_added(ids[0]) else None)

    def advance(self, tail: str, token: int, piece: str) -> tuple[str, bool]:
        """(the new tail, whether ``token``, whose text is ``piece``, ends the scope)."""
        if self.token is not None:
            return tail, token == self.token
        tail = (tail + piece)[-(len(self.marker) + 64):]
        return tail, self.marker in tail


def formats() -> dict[str, ChatFormat]:
    """Every format by name, in the order ``detect`` tries them."""
    from led_local.decoding import harmony, think_tags

    return {f.name: f for f in (harmony.FORMAT, *think_tags.FORMATS, PLAIN)}


def get(name: str) -> ChatFormat:
    known = formats()
    if name not in known:
        raise ConfigError("reasoning_format", f"must be one of {', '.join(known)}, got {name!r}")
    return known[name]


# architectures that always write one format, whatever the template says (or without one)
ARCHITECTURE_FORMATS = {"gpt-oss": "harmony", "seed_oss": "seed"}


def for_model(info, name: str | None = None) -> ChatFormat:
    """The chat format of a model (a ModelInfo: its chat template, then its architecture),
    or the one ``name`` names."""
    if name is not None:
        return get(name)
    found = detect(info.chat_template)
    if found is PLAIN and getattr(info, "architecture", None) in ARCHITECTURE_FORMATS:
        return get(ARCHITECTURE_FORMATS[info.architecture])
    return found


def detect(template: str | None) -> ChatFormat:
    """The format a chat template writes (the first whose markers it holds), else plain."""
    for f in formats().values():
        if f is not PLAIN and f.matches(template or ""):
            return f
    return PLAIN


PROMPT_THINKING = {INSIDE: "opened by the prompt", CLOSED: "closed by the prompt",
                   MODEL: "left to the model"}


def describe(info, name: str | None = None) -> dict:
    """What ``info``'s chat template does with thinking, for ``info`` and ``doctor``: the
    format, where the rendered prompt of one user message leaves thinking (with the template
    variables the model was opened with, default: thinking on where there is a switch), and
    the switches the template offers."""
    from led_local.decoding.switches import PROBE, chat_variables, template_switches
    from led_local.llama.template import TemplateError, render_chat_template

    fmt = for_model(info, name)
    out = {"reasoning_format": fmt.name, "thinking": None, "thinking_switch": None}
    template = info.chat_template
    if not template:
        return out
    switches = template_switches(template)
    out["thinking_switch"] = switches.describe()
    variables = info.chat_vars or chat_variables(template, switches=switches)
    try:
        prompt = render_chat_template(template, PROBE, bos_token="", eos_token="",
                                      variables=variables)
    except TemplateError as e:
        out["thinking"] = f"unknown (the template fails: {e})"
        return out
    out["thinking"] = PROMPT_THINKING[fmt.prompt_scope(prompt)] if fmt.think_start else \
        "no thinking markers"
    return out
