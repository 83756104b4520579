"""How a model family writes tool calls: one ``ToolSyntax`` per syntax, found from the chat
template's text, each able to cut calls out of a reply and to write the grammar that forces
one.

A reply's content streams through a ``ToolStream``: text before the syntax's start marker is
released at once; from the marker on it is held back, and at the end ``parse`` turns it into
calls (text it cannot read stays content, so a malformed call is never lost). Calls are read
from the content only: a model that mentions a marker while thinking makes no call.

Syntaxes (the markers as the families' templates write them):
- ``hermes`` (Qwen 2.5/3, QwQ, Hermes, SmolLM3, GLM):
  ``<tool_call>{"name", "arguments"}</tool_call>``
- ``llama3`` (Llama 3.1-3.3): the whole reply a JSON ``{"name", "parameters"}``, optionally
  behind ``<|python_tag|>``, several separated by ``;``
- ``mistral`` (Mistral v0.3, Nemo): ``[TOOL_CALLS][{"name", "arguments"}, ...]``, and
  ``mistral-args`` (Small 3.2, Devstral, Magistral, Ministral 3): ``[TOOL_CALLS]NAME[ARGS]{...}``
  (either is read by both)
- ``deepseek`` (R1, V3, V3.1): ``<｜tool▁calls▁begin｜>``, then per call
  ``<｜tool▁call▁begin｜>[function<｜tool▁sep｜>]NAME[\\n```json\\n]ARGS[\\n```]<｜tool▁call▁end｜>``
- ``harmony`` (gpt-oss): a message to ``functions.NAME``, read by the harmony splitter
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from led_local.errors import ConfigError


@dataclass
class ToolCall:
    """One call: the function's name and its arguments as JSON text (OpenAI's form)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def openai(self, index: int | None = None) -> dict:
        out = {"id": self.id, "type": "function",
               "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def _call(obj, args_key: str = "arguments") -> ToolCall | None:
    """A call from a decoded JSON object {name, arguments} (or ``parameters``)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):
        try:
            json.loads(args)
        except ValueError:
            return None
        return ToolCall(obj["name"], args)
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _loads(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


class ToolSyntax:
    """A tool-call syntax: ``start`` is where a call begins in the content, ``detect`` the
    template strings that say a template writes it."""

    name = ""
    start = ""
    detect: tuple[str, ...] = ()
    at_start_only = False  # a call is the whole reply (Llama 3), not a part of it

    def matches(self, template: str) -> bool:
        return any(s in template for s in self.detect)

    def holds(self, content: str) -> int:
        """Where held-back text starts in ``content`` (-1: nothing to hold yet)."""
        return content.find(self.start)

    def parse(self, text: str) -> list[ToolCall] | None:
        """The calls of a held-back ``text`` (from the start marker), None if it is not one."""
        raise NotImplementedError

    def call_rule(self, parallel: bool) -> str:
        """GBNF of the rule ``calls``: one call (``parallel``: one or more), over the rule
        ``call-json`` (a {name, arguments} object of one of the allowed functions) or
        ``call-named`` (a name and its arguments, the syntax's way)."""
        raise NotImplementedError

    args_key = "arguments"


class Hermes(ToolSyntax):
    name = "hermes"
    start = "<tool_call>"
    _json = re.compile(r"<tool_call>(?!s).*function-name", re.S)

    def matches(self, template: str) -> bool:
        # the JSON form's description; GLM's <arg_key> and Qwen3-Coder's <function=...>
        # write XML inside the same tags
        return bool(self._json.search(template)) and "<arg_key>" not in template \
            and "<function=" not in template and "<tool_calls>" not in template
    _block = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)

    def parse(self, text: str) -> list[ToolCall] | None:
        rest = self._block.sub("", text).strip()
        calls = [_call(_loads(m)) for m in self._block.findall(text)]
        if rest or not calls or None in calls:
            return None
        return calls

    def call_rule(self, parallel: bool) -> str:
        one = '"<tool_call>\\n" call-json "\\n</tool_call>"'
        return f'calls ::= {one}' + (f' ("\\n" {one})*' if parallel else "")


class Llama3(ToolSyntax):
    name = "llama3"
    start = "{"
    at_start_only = True
    detect = ('"parameters": dictionary of argument name',)
    args_key = "parameters"

    def holds(self, content: str) -> int:
        text = content.lstrip()
        if not text:
            return -1
        if text.startswith("<|python_tag|>") or text.startswith("{"):
            return len(content) - len(text)
        return 0 if "<|python_tag|>".startswith(text) else -1

    def parse(self, text: str) -> list[ToolCall] | None:
        text = text.strip().removeprefix("<|python_tag|>").strip()
        calls = []
        decoder = json.JSONDecoder()
        while text:
            try:
                obj, end = decoder.raw_decode(text)
            except ValueError:
                return None
            call = _call(obj, "parameters")
            if call is None:
                return None
            calls.append(call)
            text = text[end:].lstrip().removeprefix(";").lstrip()
        return calls or None

    def call_rule(self, parallel: bool) -> str:
        return 'calls ::= call-json' + (' ("; " call-json)*' if parallel else "")


class Mistral(ToolSyntax):
    name = "mistral"
    start = "[TOOL_CALLS]"
    detect = ("[TOOL_CALLS]",)
    _named = re.compile(r"\[TOOL_CALLS\]\s*([A-Za-z0-9_.\-]+)\s*\[ARGS\]")

    def parse(self, text: str) -> list[ToolCall] | None:
        body = text.strip()
        if self._named.match(body):  # [TOOL_CALLS]NAME[ARGS]{...}, one per marker
            calls = []
            decoder = json.JSONDecoder()
            while body:
                m = self._named.match(body)
                if m is None:
                    return None
                try:
                    args, end = decoder.raw_decode(body, m.end())
                except ValueError:
                    return None
                calls.append(ToolCall(m.group(1), json.dumps(args, ensure_ascii=False)))
                body = body[end:].strip()
            return calls
        items = _loads(body[len(self.start):].strip())
        items = [items] if isinstance(items, dict) else items
        if not isinstance(items, list) or not items:
            return None
        calls = [_call(i) for i in items]
        return None if None in calls else calls

    def call_rule(self, parallel: bool) -> str:
        more = ' ("," call-json)*' if parallel else ""
        return f'calls ::= "[TOOL_CALLS][" call-json{more} "]"'


class MistralArgs(Mistral):
    """Mistral's newer form (Small 3.2, Magistral, Ministral 3): ``[TOOL_CALLS]NAME[ARGS]{...}``."""

    name = "mistral-args"
    detect = ("[ARGS]",)

    def matches(self, template: str) -> bool:
        return "[TOOL_CALLS]" in template and "[ARGS]" in template

    def call_rule(self, parallel: bool) -> str:
        return 'calls ::= ("[TOOL_CALLS]" call-named)' + ("+" if parallel else "")


CALLS_BEGIN, CALL_BEGIN = "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>"
CALL_END, CALLS_END, SEP = "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", "<｜tool▁sep｜>"


class DeepSeek(ToolSyntax):
    name = "deepseek"
    start = CALLS_BEGIN
    detect = (CALLS_BEGIN,)
    _call_re = re.compile(re.escape(CALL_BEGIN) + r"(?:function)?\s*(?:" + re.escape(SEP)
                          + r")?\s*([^\n<]+)\s*(?:" + re.escape(SEP) + r")?\s*"
                          r"(?:```json\s*)?(.*?)\s*(?:```\s*)?" + re.escape(CALL_END), re.S)

    def parse(self, text: str) -> list[ToolCall] | None:
        body = text.strip().removeprefix(CALLS_BEGIN).removesuffix(CALLS_END).strip()
        calls, at = [], 0
        for m in self._call_re.finditer(body):
            if body[at:m.start()].strip():
                return None
            args = _loads(m.group(2))
            if not isinstance(args, dict):
                return None
            calls.append(ToolCall(m.group(1).strip(), json.dumps(args, ensure_ascii=False)))
            at = m.end()
        return calls if calls and not body[at:].strip() else None

    def call_rule(self, parallel: bool) -> str:
        # V3.1's form: NAME<｜tool▁sep｜>ARGS
        return (f'calls ::= "{CALLS_BEGIN}" ("{CALL_BEGIN}" call-named "{CALL_END}")'
                f'{"+" if parallel else ""} "{CALLS_END}"')


class HarmonyCalls(ToolSyntax):
    """gpt-oss: the harmony splitter reads messages to ``functions.NAME`` itself."""

    name = "harmony"
    start = "\x00"  # never in content: the splitter takes the calls out

    def parse(self, text: str) -> list[ToolCall] | None:
        return None

    def call_rule(self, parallel: bool) -> str:
        return ('calls ::= "<|start|>assistant"? "<|channel|>commentary to=functions." '
                'call-named')


SYNTAXES: dict[str, ToolSyntax] = {s.name: s for s in (
    Hermes(), Llama3(), MistralArgs(), Mistral(), DeepSeek(), HarmonyCalls())}
# the order detection tries them: Llama 3's templates mention no other marker
DETECT_ORDER = ("harmony", "deepseek", "mistral-args", "mistral", "hermes", "llama3")


def detect(template: str | None, fmt_name: str) -> ToolSyntax | None:
    """The syntax a chat template (its text) writes tool calls in; ``fmt_name``: the chat
    format's name (harmony's calls are its messages). None: not known."""
    if fmt_name == "harmony":
        return SYNTAXES["harmony"]
    if not template:
        return None
    for name in DETECT_ORDER[1:]:
        if SYNTAXES[name].matches(template):
            return SYNTAXES[name]
    return None


def get(name: str) -> ToolSyntax:
    if name not in SYNTAXES:
        raise ConfigError("tool_format", f"must be one of {', '.join(SYNTAXES)}, got {name!r}")
    return SYNTAXES[name]


class ToolStream:
    """A choice's content on its way out: released up to a call's start, then held."""

    def __init__(self, syntax: ToolSyntax) -> None:
        self.syntax = syntax
        self._held: str | None = None
        self._tail = ""  # a possible partial start marker at the end of released text
        self._passing = False  # text was released where a call must come first: no call

    def feed(self, content: str) -> str:
        if self._held is not None:
            self._held += content
            return ""
        if self._passing:
            return content
        text = self._tail + content
        at = self.syntax.holds(text)
        if at >= 0:
            self._held, self._tail = text[at:], ""
            return text[:at]
        from led_local.decoding.chatformat import held

        if self.syntax.at_start_only:
            self._passing = bool(text.strip())
            return text
        keep = held(text, [self.syntax.start])
        self._tail = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The content still held and the calls read from it (content: what is not calls)."""
        if self._held is None:
            tail, self._tail = self._tail, ""
            return tail, []
        calls = self.syntax.parse(self._held)
        held, self._held = self._held, None
        if calls is None:
            return held, []
        return "", calls


NAMED = {"deepseek": '"{name}" "' + SEP + '" {args}',
         "mistral-args": '"{name}" "[ARGS]" {args}',
         "harmony": '"{name}" " <|constrain|>json"? "<|message|>" {args}'}


def tool_grammar(syntax: ToolSyntax, functions: list[dict], *, fmt, scope: str,
                 parallel: bool = False):
    """The grammar of a whole reply that calls one of ``functions`` ({name, parameters}
    each) in ``syntax`` (``parallel``: one or more calls; harmony calls one at a time), after
    the thinking that the chat format ``fmt`` may write where the prompt left it (``scope``,
    chatformat's INSIDE, CLOSED or MODEL) open."""
    from llama_cpp.llama_grammar import SchemaConverter

    from led_local.llama.grammar import Grammar, strict_strings

    conv = SchemaConverter(prop_order={"name": 0}, allow_fetch=False, dotall=False,
                           raw_pattern=False)
    alts, named = [], []
    for i, f in enumerate(functions):
        params = f.get("parameters") or {"type": "object"}
        try:
            params = conv.resolve_refs(params, f"tool-{i}")
            args = conv.visit(params, f"args-{i}")
        except Exception as e:  # the converter raises ValueError, KeyError, TypeError, ...
            raise ConfigError("tools", f"function {f['name']!r}: its parameters are not a JSON "
                              f"schema the grammar converter supports: {e}") from None
        alts.append({"type": "object", "properties": {"name": {"const": f["name"]},
                                                      syntax.args_key: params},
                     "required": ["name", syntax.args_key]})
        if syntax.name in NAMED:
            named.append(NAMED[syntax.name].format(name=f["name"], args=args))
    conv.visit({"anyOf": alts} if len(alts) > 1 else alts[0], "call-json")
    rules = [strict_strings(conv.format_grammar()), syntax.call_rule(parallel)]
    if named:
        rules.append("call-named ::= " + " | ".join(named))
    rules.append("root ::= calls")
    return fmt.constrain(Grammar("\n".join(rules) + "\n", "tools"), scope, header=False)


PROBE_NAME = "led_local_probe_tool"
PROBE_TOOL = {"type": "function", "function": {
    "name": PROBE_NAME, "description": "Probe.", "parameters": {"type": "object",
                                                                "properties": {}}}}


def renders_tools(render) -> bool:
    """Whether a chat template writes the tools it is given into the prompt; ``render``:
    (messages, tools) -> prompt text."""
    try:
        return PROBE_NAME in render([{"role": "user", "content": "Hello"}], [PROBE_TOOL])
    except Exception:  # a template that raises on tools (or on anything): no tool support
        return False
