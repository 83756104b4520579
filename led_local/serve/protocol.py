"""The OpenAI-compatible wire format: request models, their validation, errors, responses.

Requests are parsed strictly from JSON (a string where a number belongs is a 400, not a
silent conversion); unknown fields are ignored, as OpenAI-compatible servers do. The
non-OpenAI decoding fields (``method``, ``top_k``, ``led_depths``, ...) sit at the top level
of the body, where the ``openai`` client's ``extra_body`` puts them. Every error leaves the
server as ``{"error": {"message", "type", "param", "code"}}`` built by ``APIError``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from led_local.decoding import chatformat, registry
from led_local.decoding.chatformat import Split
from led_local.decoding.methods import DecodeConfig, build_config
from led_local.decoding.options import TEMPERATURE, Option
from led_local.errors import ConfigError, LedError
from led_local.llama.grammar import Grammar

MAX_STOP = 16
MIN_TEMPERATURE = TEMPERATURE.tiny  # below it 1/T overflows float32 logits: NaN


class APIError(Exception):
    """An error answered to the client: HTTP ``status`` and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False
    led_tokens: bool = False  # led-local's extension: per-token exploration (docs/serving.md)


class TextPart(_Strict):
    type: str
    text: str = ""


FUNCTION_NAME = r"^[A-Za-z0-9_.\-]{1,64}$"


class FunctionName(_Strict):
    name: str = Field(pattern=FUNCTION_NAME)


class FunctionDef(FunctionName):
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def spec(self) -> dict:
        out = {"name": self.name, "parameters": self.parameters or {"type": "object",
                                                                     "properties": {}}}
        return out if self.description is None else {**out, "description": self.description}


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class CalledFunction(_Strict):
    name: str
    arguments: str


class ToolCallIn(_Strict):
    """A tool call of an earlier assistant turn, as the client sends it back."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction

    def for_template(self) -> dict:
        """The call as templates read it: arguments decoded (Llama 3's template writes them
        with ``tojson``; the others take a mapping as well as a string)."""
        try:
            args = json.loads(self.function.arguments)
        except ValueError:
            raise APIError(400, f"messages: the arguments of tool call {self.id!r} are not "
                           "JSON", param="messages") from None
        return {"id": self.id, "type": "function",
                "function": {"name": self.function.name, "arguments": args}}


class Message(_Strict):
    role: str
    content: str | list[TextPart] | None = None
    # an earlier reply's thinking, as clients send it back (llama-server, vLLM, gpt-oss)
    reasoning_content: str | None = None
    reasoning: str | None = None
    thinking: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool message's answer to a call
    name: str | None = None

    def for_template(self, fmt) -> dict:
        """The message as the chat template reads it: an assistant turn's reasoning in the
        field the model family's template takes (``fmt``: the chat format), its tool calls
        with decoded arguments; a tool result with its call's id."""
        reasoning = self.reasoning_content or self.reasoning or self.thinking
        if self.role == "assistant" and reasoning:
            out = fmt.assistant_message(Split(reasoning=reasoning, content=self.text()))
        else:
            out = {"role": self.role, "content": self.text()}
        if self.tool_calls and self.role == "assistant":
            out["tool_calls"] = [c.for_template() for c in self.tool_calls]
        if self.role == "tool":
            if self.tool_call_id is not None:
                out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        bad = [p.type for p in self.content if p.type != "text"]
        if bad:
            raise APIError(400, f"messages: content parts of type {bad[0]!r} are not supported "
                           "(text only)", param="messages")
        return "".join(p.text for p in self.content)


class JSONSchemaFormat(_Strict):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's ``response_format``: text, json_object or json_schema. Strict or not, a
    schema is enforced by its grammar. As llama-server, a ``schema`` beside the type (a
    json_object's, or a json_schema's without ``json_schema``) is the schema too."""

    type: str
    json_schema: JSONSchemaFormat | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")

    def grammar(self) -> Grammar | None:
        if self.type == "text":
            return None
        schema = self.json_schema.schema_ if self.json_schema is not None else self.schema_
        if self.type == "json_object" and self.schema_ is None:
            return Grammar.json_object()
        if self.type in ("json_object", "json_schema"):
            if schema is None:
                raise APIError(400, "response_format: json_schema needs json_schema.schema",
                               param="response_format")
            return schema_grammar(schema, "response_format")
        raise APIError(400, f"response_format: type must be text, json_object or json_schema, "
                       f"got {self.type!r}", param="response_format")


def schema_grammar(schema: dict | bool, param: str) -> Grammar:
    """The grammar of ``schema``; a 400 naming ``param`` when the converter refuses it."""
    try:
        return Grammar.from_schema(schema, param=param)
    except ConfigError as e:
        raise APIError(400, str(e), param=param) from None


def _request_field(o: Option) -> tuple[Any, Any]:
    """The pydantic field of a decoding option: its type, None when absent, its bounds."""
    kind = Literal[o.choices] if o.choices is not None else o.kind
    bounds: dict[str, float] = {}
    if o.low is not None:
        bounds["gt" if o.low_open else "ge"] = o.low
    if o.high is not None:
        bounds["lt" if o.high_open else "le"] = o.high
    return (kind | None, Field(None, **bounds))


def field_name(name: str) -> str:
    """The request field of decoding option ``name`` (itself when it has none)."""
    for o in registry.options():
        if o.name == name:
            return o.field or name
    return name


# led-local's decoding fields, from the methods' option declarations (the openai client sends
# them with extra_body); the OpenAI fields among them (temperature, top_p) are declared below
_MethodFields = create_model(
    "_MethodFields", __base__=_Strict,
    method=(Literal[tuple(registry.METHODS)] | None, None),
    **{o.field: _request_field(o) for o in registry.options() if o.field and not o.openai})


class CommonRequest(_MethodFields):
    """Fields shared by chat and text completions (OpenAI's and led-local's own)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    cache_prompt: bool = True  # as llama-server: reuse a finished sequence's KV prefix
    ignore_eos: bool = False  # as llama-server: never end at an end-of-generation token
    response_format: ResponseFormat | None = None
    grammar: str | None = None  # GBNF, as llama-server takes it
    json_schema: dict[str, Any] | bool | None = None  # a JSON schema, as llama-server takes it
    best_of: int | None = None

    def constraint(self) -> Grammar | None:
        """The grammar the output must follow: ``grammar`` (GBNF), ``json_schema``, or
        ``response_format``'s JSON object or schema; None for free text. One of them."""
        fmt = self.response_format
        given = [name for name, on in (("grammar", self.grammar is not None),
                                       ("json_schema", self.json_schema is not None),
                                       ("response_format", fmt is not None and
                                        fmt.type != "text")) if on]
        if len(given) > 1:
            raise APIError(400, f"give one of {' or '.join(given)}, not both",
                           param=given[0])
        if self.grammar is not None:
            return Grammar(self.grammar, "grammar")
        if self.json_schema is not None:
            return schema_grammar(self.json_schema, "json_schema")
        return None if fmt is None else fmt.grammar()

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise APIError(400, f"stop: at most {MAX_STOP} strings, got {len(stops)}",
                           param="stop")
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def led_tokens(self) -> bool:
        return bool(self.stream_options and self.stream_options.led_tokens)

    def check_unsupported(self) -> None:
        """Refuse OpenAI options that would change the output but that LED does not apply,
        instead of dropping them silently."""
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported (must be 0 or absent)", param=name)
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")
        if self.best_of is not None and self.best_of not in (1, self.n):
            raise APIError(400, f"best_of is not supported (only best_of == n, {self.n}), got "
                           f"{self.best_of}", param="best_of")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options needs stream: true", param="stream_options")

    def decode_config(self, base: DecodeConfig) -> DecodeConfig:
        """The request's method: the server's defaults overridden by the fields given.

        A field for a method that would ignore it is a 400; a field at its neutral value
        (top_p: 1, which clients send as "off") counts as not given there."""
        unit = registry.get(self.method or base.method)
        reads = {o.name for o in unit.all_options()}
        given = {}
        for o in registry.options():
            if o.field and hasattr(self, o.field):
                value = getattr(self, o.field)
                if o.name not in reads and value is not None and value == o.neutral:
                    value = None
                given[o.name] = value
        try:
            return build_config(unit.name, given, base=base)
        except ConfigError as e:
            raise APIError(400, e.render(field_name), param=field_name(e.option)) from None
        except LedError as e:
            raise APIError(400, e.render(field_name)) from None


class ChatRequest(CommonRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # the chat template's variables and the reply's split, as llama-server and vLLM name them
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    reasoning_format: str | None = None
    thinking_budget: int | None = None
    thinking: bool | None = None  # led-local's: every switch of the template on or off
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None  # the legacy form of tools
    function_call: Literal["none", "auto"] | FunctionName | None = None
    # vLLM's (and llama-server's): continue the final assistant message (a prefill) instead of
    # starting a new reply after it; or render without the assistant's opening
    continue_final_message: bool = False
    add_generation_prompt: bool = True

    def continuation(self) -> bool:
        """Whether the reply continues the final (assistant) message; a 400 where that
        cannot be."""
        if not self.continue_final_message:
            return False
        if self.add_generation_prompt:
            raise APIError(400, "continue_final_message needs add_generation_prompt: false",
                           param="continue_final_message")
        if self.messages[-1].role != "assistant":
            raise APIError(400, "continue_final_message needs an assistant message last",
                           param="continue_final_message")
        return True

    def tool_request(self) -> tuple[list[dict], str | None]:
        """The functions the reply may call ({name, parameters, description}) and how:
        None (no tools), ``auto``, ``required`` or ``name:NAME`` (that function)."""
        if self.tools is not None and self.functions is not None:
            raise APIError(400, "give tools or the legacy functions, not both", param="tools")
        legacy = self.functions is not None or self.function_call is not None
        defs = [t.function for t in self.tools or []] if not legacy else self.functions or []
        choice = self.function_call if legacy else self.tool_choice
        param = "function_call" if legacy else "tool_choice"
        names = [d.name for d in defs]
        if len(set(names)) != len(names):
            raise APIError(400, "tools: two functions have the same name", param="tools")
        if choice is not None and not defs and choice != "none":
            raise APIError(400, f"{param} needs {'functions' if legacy else 'tools'}",
                           param=param)
        if not defs or choice == "none":
            return [], None
        if choice is None or choice == "auto":
            return [d.spec() for d in defs], "auto"
        if choice == "required":
            return [d.spec() for d in defs], "required"
        name = choice.function.name if isinstance(choice, NamedToolChoice) else choice.name
        if name not in names:
            raise APIError(400, f"{param}: no function {name!r} among the tools", param=param)
        return [d.spec() for d in defs], f"name:{name}"


    def chat_variables(self, state) -> dict:
        """The template variables this request adds to the server's (``state``: ServerState;
        its chat template's switches say whether ``reasoning_effort`` applies)."""
        from led_local.decoding.switches import TemplateSwitches, chat_variables, check_kwargs

        kwargs = {} if self.chat_template_kwargs is None else \
            self._checked(lambda: check_kwargs(self.chat_template_kwargs))
        if self.thinking_budget is not None:
            kwargs = {"thinking_budget": self.thinking_budget, **kwargs}
        thinking = state.switches.thinking if self.thinking is not None else ()
        return self._checked(lambda: chat_variables(
            None, thinking=self.thinking, reasoning_effort=self.reasoning_effort,
            kwargs=kwargs, switches=TemplateSwitches(thinking, state.switches.effort)))

    def chat_format(self, default):
        """The format the reply divides by: ``reasoning_format`` given, else ``default``."""
        if self.reasoning_format is None:
            return default
        return self._checked(lambda: chatformat.get(self.reasoning_format))

    @staticmethod
    def _checked(f):
        try:
            return f()
        except ConfigError as e:
            raise APIError(400, e.render(field_name), param=field_name(e.option)) from None

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_n(self) -> int:
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return self.top_logprobs or 0


class CompletionRequest(CommonRequest):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None

    def limit(self) -> int | None:
        return self.max_tokens

    def top_n(self) -> int:
        return self.logprobs or 0

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.echo:
            raise APIError(400, "echo is not supported", param="echo")
        if self.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) \
                and len(self.prompt) != 1:
            raise APIError(400, "prompt: one prompt per request (a string or a list of one)",
                           param="prompt")


TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal"})


def parse(model: type[CommonRequest], body: bytes) -> CommonRequest:
    """Parse and validate a JSON body; malformed JSON or a wrong type is a 400."""
    try:
        req = model.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        # (a union's member names its type in the location: dropped)
        loc = ".".join(str(p) for p in err["loc"]
                       if not (isinstance(p, str) and (p in TYPE_TAGS or "[" in p)))
        if err["type"] == "json_invalid":
            raise APIError(400, f"the body is not valid JSON: {err['msg']}") from None
        raise APIError(400, f"{loc}: {err['msg']}" if loc else err["msg"],
                       param=loc or None) from None
    req.check_unsupported()
    return req


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, *, cached: int = 0) -> dict:
    """OpenAI's usage; ``cached``: prompt tokens whose KV came from the prompt cache."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def chat_logprobs(entries: list[dict]) -> dict:
    """OpenAI's chat ``logprobs`` object from entries {token, logprob, bytes, top}."""
    return {"content": [
        {"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"],
         "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in e["top"]]}
        for e in entries]}


def text_logprobs(entries: list[dict], offset: int = 0) -> dict:
    """The legacy completions ``logprobs`` object (tokens, token_logprobs, top_logprobs,
    text_offset); ``offset`` is where the first entry's text starts."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t: lp for t, lp, _ in e["top"]} for e in entries],
            "text_offset": offsets}
