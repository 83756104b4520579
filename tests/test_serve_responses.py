"""The Responses API (``POST /v1/responses``) through the official ``openai`` client: output
items (reasoning, message, function_call), the typed stream, tools and their outputs sent
back, ``text.format``, ``max_output_tokens``, and its 400s. Scripted models (tests/scripted.py)
say a Qwen3 reply with thinking, or a call; the bundled model answers under a JSON schema."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import scripted
from conftest import SMOLLM2
from test_serve import KEY, Server
from test_serve_tools import FAMILIES as TOOL_FAMILIES
from test_serve_tools import WEATHER

pytestmark = pytest.mark.skipif(not scripted.TEMPLATES.is_dir(),
                                reason="llama.cpp's sources are not built (make install)")
USER = 4
REASONING, ANSWER = "Two and two make four.", "The answer is 4"
FLAT_WEATHER = {"type": "function", **WEATHER["function"]}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    made = {}
    qwen = TOOL_FAMILIES["qwen3"]
    answer = scripted.write_scripted(
        tmp_path_factory.mktemp("answer") / "qwen3.gguf", vocab="qwen2",
        template=qwen["template"], script=f"<think>{REASONING}</think>\n\n{ANSWER}",
        end="<|im_end|>", specials={"<think>": USER, "</think>": USER}).path
    caller = scripted.write_scripted(
        tmp_path_factory.mktemp("caller") / "qwen3.gguf", vocab="qwen2",
        template=qwen["template"], script=qwen["script"], end="<|im_end|>",
        specials=qwen["specials"]).path
    made["answer"] = Server(answer, "--api-key", KEY, "--parallel", "2")
    made["caller"] = Server(caller, "--api-key", KEY, "--parallel", "2", "--ctx", "4096")
    yield made
    for s in made.values():
        s.stop()


def test_a_response_has_its_reasoning_and_its_message(servers):
    r = servers["answer"].client().responses.create(model="m", input="What is 2 + 2?",
                                                    temperature=0)
    assert r.status == "completed" and r.id.startswith("resp_")
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == REASONING
    assert r.output_text == ANSWER
    assert r.usage.input_tokens > 5 and r.usage.output_tokens > 5
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_the_stream_sends_typed_events_in_order(servers):
    stream = servers["answer"].client().responses.create(
        model="m", input=[{"role": "user", "content": "What is 2 + 2?"}], stream=True,
        temperature=0)
    events = list(stream)
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:3] == ["response.created", "response.in_progress",
                         "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    first_text = kinds.index("response.output_text.delta")
    assert kinds.index("response.reasoning_text.done") < first_text
    assert "response.content_part.added" in kinds[:first_text]
    thinking = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert (thinking, text) == (REASONING, ANSWER)
    done = events[-1].response
    assert done.output_text == ANSWER and [o.type for o in done.output] == ["reasoning",
                                                                            "message"]


def test_max_output_tokens_leaves_the_response_incomplete(servers):
    client = servers["answer"].client()
    r = client.responses.create(model="m", input="What is 2 + 2?", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    events = list(client.responses.create(model="m", input="What is 2 + 2?",
                                          max_output_tokens=3, stream=True))
    assert events[-1].type == "response.incomplete"


def test_a_call_is_a_function_call_item_and_its_output_goes_back(servers):
    client = servers["caller"].client()
    r = client.responses.create(model="m", input="What is 2 + 2?", tools=[FLAT_WEATHER],
                                temperature=0)
    calls = [o for o in r.output if o.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == \
        [("get_weather", {"city": "Paris"})]
    events = list(client.responses.create(model="m", input="What is 2 + 2?",
                                          tools=[FLAT_WEATHER], stream=True, temperature=0))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.name, json.loads(e.arguments)) for e in done] == \
        [("get_weather", {"city": "Paris"})]
    again = client.responses.create(model="m", tools=[FLAT_WEATHER], temperature=0, input=[
        {"role": "user", "content": "What is 2 + 2?"},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
         "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id,
         "output": "Sunny, 21 C"}])
    assert again.usage.input_tokens > r.usage.input_tokens


def test_bad_responses_requests_are_400s(servers):
    srv = servers["answer"]
    client = srv.client()
    bad = [dict(input="Hi", previous_response_id="resp_123"),
           dict(input=[]),
           dict(input=[{"type": "image", "url": "x"}]),
           dict(input="Hi", tools=[{"type": "web_search"}]),
           dict(input=[{"role": "robot", "content": "Hi"}]),
           dict(input="Hi", text={"format": {"type": "sound"}})]
    for kw in bad:
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model="m", max_output_tokens=4, **kw)
    with pytest.raises(openai.AuthenticationError):
        srv.client(key="wrong").responses.create(model="m", input="Hi")


def test_text_format_json_schema_constrains_the_output(smollm2):
    schema = {"type": "object", "properties": {"color": {"type": "string"},
                                               "count": {"type": "integer"}},
              "required": ["color", "count"], "additionalProperties": False}
    srv = Server(SMOLLM2, "--api-key", KEY)
    try:
        r = srv.client().responses.create(
            model="m", input="Name a color and a number.", max_output_tokens=60,
            extra_body={"seed": 2},
            text={"format": {"type": "json_schema", "name": "pick", "schema": schema,
                             "strict": True}})
        assert r.status == "completed"
        jsonschema.validate(json.loads(r.output_text), schema)
    finally:
        srv.stop()
