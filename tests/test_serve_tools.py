"""Tool calls: rendered through the model's chat template, cut out of the reply per family
(tests/scripted.py models say a family's real call text), streamed as ``tool_calls`` deltas,
sent back as ``role: tool``; ``tool_choice`` required or named forces a call with a grammar
(a real model, every method); a template without tools is a 400."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import scripted
from conftest import SMOLLM2 as MODEL
from test_serve import KEY, Server

from led_local.decoding import chatformat
from led_local.decoding import tool_calls as T

pytestmark = pytest.mark.skipif(not scripted.TEMPLATES.is_dir(),
                                reason="llama.cpp's sources are not built (make install)")
CONTROL, USER = 3, 4
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                    "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is 2 + 2?"}]


# -- parsing, per syntax, whatever the chunking ------------------------------------------------

CASES = {
    "hermes": ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
               '"Paris"}}\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 2, '
               '"b": 3}}\n</tool_call>', "Let me look.\n"),
    "llama3": ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
               '{"name": "add", "parameters": {"a": 2, "b": 3}}', ""),
    "mistral": ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                '{"name": "add", "arguments": {"a": 2, "b": 3}}]', ""),
    "mistral-args": ('Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]add[ARGS]'
                     '{"a": 2, "b": 3}', "Sure."),
    "deepseek": (f'{T.CALLS_BEGIN}{T.CALL_BEGIN}function{T.SEP}get_weather\n```json\n'
                 f'{{"city": "Paris"}}\n```{T.CALL_END}\n{T.CALL_BEGIN}add{T.SEP}'
                 f'{{"a": 2, "b": 3}}{T.CALL_END}{T.CALLS_END}', ""),
}


def streamed(syntax: T.ToolSyntax, text: str, step: int) -> tuple[str, list]:
    ts = T.ToolStream(syntax)
    out = "".join(ts.feed(text[i:i + step]) for i in range(0, len(text), step))
    rest, calls = ts.finish()
    return out + rest, [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("name", CASES)
def test_every_syntax_reads_its_calls_in_any_chunking(name):
    text, before = CASES[name]
    want = [("get_weather", {"city": "Paris"}), ("add", {"a": 2, "b": 3})]
    for step in (1, 2, 3, 7, len(text)):
        assert streamed(T.SYNTAXES[name], text, step) == (before, want), step


@pytest.mark.parametrize("name", CASES)
def test_text_that_is_not_a_call_stays_content(name):
    syntax = T.SYNTAXES[name]
    broken = CASES[name][0].replace('"Paris"', "Paris")  # arguments that are not JSON
    assert streamed(syntax, broken, 3) == (broken, [])
    plain = "No call here: < [ { just text."
    assert streamed(syntax, plain, 2) == (plain, [])


def test_llama3_calls_only_as_the_whole_reply():
    text = 'The JSON is {"name": "add", "parameters": {"a": 1, "b": 2}}'
    assert streamed(T.SYNTAXES["llama3"], text, 4) == (text, [])


def test_harmony_calls_are_messages_to_functions():
    from led_local.decoding.harmony import HarmonySplit

    split = HarmonySplit()
    text = ("<|channel|>analysis<|message|>Check the weather.<|end|><|start|>assistant"
            "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
            '{"city": "Paris"}')
    parts = [split.feed(c) for c in text] + [split.finish()]
    assert "".join(p.reasoning for p in parts) == "Check the weather."
    assert "".join(p.content for p in parts) == ""
    assert [(c.name, json.loads(c.arguments)) for c in split.calls] == \
        [("get_weather", {"city": "Paris"})]


TEMPLATES = {"Qwen-Qwen3-0.6B.jinja": "hermes", "Qwen-Qwen2.5-7B-Instruct.jinja": "hermes",
             "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": "hermes",
             "ibm-granite-granite-4.0.jinja": "hermes",
             "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3",
             "meta-llama-Llama-3.3-70B-Instruct.jinja": "llama3",
             "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral",
             "Mistral-Small-3.2-24B-Instruct-2506.jinja": "mistral-args",
             "mistralai-Ministral-3-14B-Reasoning-2512.jinja": "mistral-args",
             "deepseek-ai-DeepSeek-V3.1.jinja": "deepseek",
             "openai-gpt-oss-120b.jinja": "harmony",
             # XML inside <tool_call> (GLM, Qwen3-Coder), YAML (Apriel 1.5): not known
             "GLM-4.6.jinja": None, "Qwen3-Coder.jinja": None, "unsloth-Apriel-1.5.jinja": None,
             "google-gemma-2-2b-it.jinja": None}


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_syntax_is_found_from_the_template(template):
    text = (scripted.TEMPLATES / template).read_text()
    syntax = T.detect(text, chatformat.detect(text).name)
    assert (syntax.name if syntax else None) == TEMPLATES[template]


def test_tool_grammars_parse_for_every_syntax(smollm2):
    from led_local.llama.runtime import Runtime

    functions = [WEATHER["function"], ADD["function"]]
    with Runtime(MODEL, vocab_only=True) as rt:
        for syntax in T.SYNTAXES.values():
            for fmt in (chatformat.PLAIN, chatformat.get("deepseek"), chatformat.get("harmony")):
                for scope, parallel in ((chatformat.MODEL, False), (chatformat.INSIDE, True),
                                        (chatformat.CLOSED, False)):
                    g = T.tool_grammar(syntax, functions, fmt=fmt, scope=scope,
                                       parallel=parallel)
                    assert g.whole
                    g.check(rt.vocab, param="tools")


# -- a server over models that say a family's call ---------------------------------------------

FAMILIES = {
    "qwen3": dict(
        vocab="qwen2", template="Qwen-Qwen3-0.6B.jinja",
        specials=dict.fromkeys(("<think>", "</think>", "<tool_call>", "</tool_call>"), USER),
        end="<|im_end|>",
        script='<think>Ask the tool.</think>\n\n<tool_call>{"name": "get_weather",'
               '"arguments":{"city":"Paris"}}</tool_call>', gates=(), reasoning="Ask the tool."),
    "llama-3.1": dict(
        vocab="llama-bpe", template="meta-llama-Llama-3.1-8B-Instruct.jinja",
        specials={}, end="<|eot_id|>",
        script='{"name": "get_weather","parameters":{"city":"Paris"}}', gates=(),
        reasoning=None),
    "gpt-oss": dict(
        vocab="qwen2", template="openai-gpt-oss-120b.jinja",
        specials=dict.fromkeys(("<|start|>", "<|channel|>", "<|message|>", "<|end|>",
                                "<|return|>", "<|call|>", "<|constrain|>"), CONTROL),
        end="<|call|>",
        script="<|channel|>analysis<|message|>Ask the tool.<|end|><|start|>assistant"
               "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
               '{"city": "Paris"}',
        gates=(("<|channel|>", "analysis", "comment"), ("<|message|>", "json", '{"')),
        reasoning="Ask the tool."),
}


@pytest.fixture(scope="module")
def family_server(tmp_path_factory):
    made: dict[str, Server] = {}

    def get(name: str) -> Server:
        if name not in made:
            f = FAMILIES[name]
            model = scripted.write_scripted(
                tmp_path_factory.mktemp(name) / f"{name}.gguf", vocab=f["vocab"],
                template=f["template"], script=f["script"], end=f["end"],
                specials=f["specials"], gates=f["gates"]).path
            made[name] = Server(model, "--api-key", KEY, "--parallel", "2", "--ctx", "4096")
        return made[name]

    yield get
    for s in made.values():
        s.stop()


@pytest.mark.parametrize("name", FAMILIES)
def test_the_reply_s_call_comes_back_as_tool_calls(family_server, name):
    srv = family_server(name)
    client = srv.client()
    r = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, ADD],
                                       max_tokens=80, temperature=0, seed=1)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
        [("get_weather", {"city": "Paris"})]
    assert calls[0].id.startswith("call_") and calls[0].type == "function"
    assert not choice.message.content
    reasoning = FAMILIES[name]["reasoning"]
    assert getattr(choice.message, "reasoning_content", None) == reasoning
    # the tools are in the prompt: it is longer than without them
    bare = client.chat.completions.create(model="m", messages=ASK, max_tokens=1)
    assert r.usage.prompt_tokens > bare.usage.prompt_tokens + 20

    # streamed: the same call in a tool_calls delta, then finish_reason tool_calls
    stream = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, ADD],
                                            max_tokens=80, temperature=0, stream=True)
    deltas, finish = [], None
    for chunk in stream:
        for c in chunk.choices:
            deltas += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert [(d.index, d.function.name, json.loads(d.function.arguments)) for d in deltas] == \
        [(0, "get_weather", {"city": "Paris"})]

    # the call and its result go back into the next render
    again = client.chat.completions.create(model="m", tools=[WEATHER, ADD], max_tokens=80,
                                           temperature=0, messages=[
        *ASK, {"role": "assistant", "content": None, "tool_calls": [
            {"id": calls[0].id, "type": "function", "function": {
                "name": "get_weather", "arguments": calls[0].function.arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 21 C"}])
    assert again.usage.prompt_tokens > r.usage.prompt_tokens


def test_without_tools_the_same_text_is_content(family_server):
    srv = family_server("qwen3")
    r = srv.client().chat.completions.create(model="m", messages=ASK, max_tokens=80,
                                             temperature=0)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.tool_calls is None
    assert json.loads(r.choices[0].message.content.strip()
                      .removeprefix("<tool_call>").removesuffix("</tool_call>")) == \
        {"name": "get_weather", "arguments": {"city": "Paris"}}


def test_tool_requests_that_cannot_work_are_400s(family_server):
    import openai

    client = family_server("qwen3").client()
    bad = [
        dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
        dict(tool_choice="required"),
        dict(tools=[WEATHER, WEATHER]),
        dict(tools=[{"type": "function", "function": {"name": "has space"}}]),
        dict(tools=[WEATHER], tool_choice="sometimes"),
    ]
    for kw in bad:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=ASK, max_tokens=4, **kw)


# -- a real model, a template with tools, tool_choice forcing a call ---------------------------

@pytest.fixture(scope="module")
def smol(smollm2):
    hermes = scripted.TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja"
    srv = Server(MODEL, "--api-key", KEY, "--parallel", "2", "--chat-template", str(hermes),
                 "--method", "led")
    yield srv
    srv.stop()


@pytest.mark.parametrize("method", ["sample", "led", "greedy", "hapo"])
def test_required_and_named_tool_choice_force_a_valid_call(smol, method):
    client = smol.client()
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
    for choice, names in (("required", {"get_weather", "add"}),
                          ({"type": "function", "function": {"name": "add"}}, {"add"})):
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Add 2 and 3."}],
            tools=[WEATHER, ADD], tool_choice=choice, max_tokens=120, seed=3,
            extra_body={"method": method})
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c.message
        assert c.message.tool_calls
        for call in c.message.tool_calls:
            assert call.function.name in names
            jsonschema.validate(json.loads(call.function.arguments),
                                schemas[call.function.name])


def test_a_template_without_tools_is_a_400_naming_it(smollm2):
    import openai

    srv = Server(MODEL, "--api-key", KEY)
    try:
        with pytest.raises(openai.BadRequestError) as e:
            srv.client().chat.completions.create(model="m", messages=ASK, tools=[WEATHER],
                                                 max_tokens=4)
        assert e.value.body["code"] == "tools_not_supported"
        assert Path(MODEL).stem in e.value.body["message"]
        # tool_choice none: tools are not used, the request is answered
        r = srv.client().chat.completions.create(model="m", messages=ASK, tools=[WEATHER],
                                                 tool_choice="none", max_tokens=4)
        assert r.choices[0].finish_reason == "length"
    finally:
        srv.stop()
