"""Constrained output on reasoning models and under every method.

A JSON schema or grammar constrains the answer, not the thinking: a reasoning model thinks
first, as its chat format writes it, where the prompt leaves thinking open (tiny models with
real vocabularies and templates that say a fixed text, tests/scripted.py). And every method
keeps to the grammar: DoLa, HAPO and SwiReasoning (its injected tokens included) on the
bundled model, and a token the grammar forbids is refused instead of aborting llama.cpp.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import scripted
from click.testing import CliRunner
from test_serve import KEY, Server

from led_local.cli import main
from led_local.errors import LedError

pytestmark = pytest.mark.skipif(not scripted.TEMPLATES.is_dir(),
                                reason="llama.cpp's sources are not built (make install)")

CONTROL, USER = 3, 4
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
ANSWER = '{"city": "Paris"}'
REASONING = "Name the capital."
THINK = {"<think>": USER, "</think>": USER}
R1 = {**dict.fromkeys(("<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"), CONTROL), **THINK}
HARMONY = dict.fromkeys(("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>",
                         "<|call|>", "<|constrain|>"), CONTROL)
FAMILIES = {
    # the model opens thinking itself
    "qwen3": dict(vocab="qwen2", template="Qwen-Qwen3-0.6B.jinja", specials=THINK,
                  end="<|im_end|>", script=f"<think>{REASONING}</think>\n\n{ANSWER}"),
    # the prompt opened it: the reply starts inside
    "deepseek-r1-distill-qwen": dict(
        vocab="qwen2", template="deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", specials=R1,
        end="<｜end▁of▁sentence｜>", script=f"{REASONING}</think>\n\n{ANSWER}"),
    # harmony: an analysis message, then the answer as the final message
    "gpt-oss": dict(vocab="qwen2", template="openai-gpt-oss-120b.jinja", specials=HARMONY,
                    end="<|return|>",
                    script=f"<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant"
                           f"<|channel|>final<|message|>{ANSWER}",
                    gates=(("<|channel|>", "analysis", "final"), ("<|message|>", "final", '{"'))),
}
ASK = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    made: dict[str, scripted.Scripted] = {}

    def get(name: str) -> scripted.Scripted:
        if name not in made:
            f = FAMILIES[name]
            made[name] = scripted.write_scripted(
                tmp_path_factory.mktemp(name) / f"{name}.gguf", vocab=f["vocab"],
                template=f["template"], script=f["script"], end=f["end"],
                specials=f["specials"], gates=f.get("gates", ()), messages=ASK)
        return made[name]

    return get


@pytest.mark.parametrize("name", FAMILIES)
def test_a_reasoning_model_thinks_then_answers_by_the_schema(family, name):
    srv = Server(family(name).path, "--api-key", KEY, "--parallel", "2", "--ctx", "2048")
    try:
        client = srv.client()
        fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA,
                                                      "strict": True}}
        for method in ("led", "sample", "greedy"):
            r = client.chat.completions.create(model="m", messages=ASK, max_tokens=60, seed=3,
                                               response_format=fmt,
                                               extra_body={"method": method})
            msg = r.choices[0].message
            assert r.choices[0].finish_reason == "stop", (method, msg)
            jsonschema.validate(json.loads(msg.content), SCHEMA)
            assert json.loads(msg.content) == {"city": "Paris"}
            assert msg.model_extra["reasoning_content"] == REASONING, (method, msg)
        # streamed, the same division
        chunks = list(client.chat.completions.create(
            model="m", messages=ASK, max_tokens=60, seed=3, response_format=fmt, stream=True))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or ""
                            for c in chunks if c.choices)
        assert json.loads(content) == {"city": "Paris"} and reasoning == REASONING
    finally:
        srv.stop()


def test_generate_json_schema_lets_the_model_think(family, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    r = CliRunner().invoke(main, ["generate", str(family("qwen3").path), "-p", ASK[0]["content"],
                                  "--json-schema", str(schema), "--seed", "1", "-n", "60",
                                  "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert REASONING in rec["text"] and rec["text"].rstrip().endswith(ANSWER)


@pytest.fixture(scope="module")
def smollm2_schema(tmp_path_factory):
    path = tmp_path_factory.mktemp("schema") / "schema.json"
    path.write_text(json.dumps({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": False}))
    return path


def _hapo_stats(path) -> str:
    from led_local.decoding.hapo import save_entropies

    save_entropies(path, [0.1 * (i % 17) + 0.05 for i in range(400)], meta={})
    return str(path)


@pytest.mark.parametrize("extra", [
    ("-m", "dola"),
    ("-m", "hapo", "--hapo-stats", "STATS"),
    ("-m", "swir", "--swir-window", "1"),
    # switch budget 1: convergence and termination injections ("The final answer is") that
    # the grammar forbids give way to it
    ("-m", "swir", "--swir-window", "1", "--swir-max-switch", "1"),
], ids=["dola", "hapo", "swir", "swir-injections"])
def test_every_method_keeps_to_the_schema(smollm2, smollm2_schema, tmp_path, extra):
    extra = [str(_hapo_stats(tmp_path / "h.json")) if x == "STATS" else x for x in extra]
    schema = json.loads(smollm2_schema.read_text())
    for seed in (1, 2, 3):
        r = CliRunner().invoke(main, ["generate", str(smollm2), "-p", "Describe a person.",
                                      "--json-schema", str(smollm2_schema), "--seed", str(seed),
                                      "-n", "80", "-t", "1.0", "--json", *extra])
        assert r.exit_code == 0, r.output
        rec = json.loads(r.stdout)
        if rec["finish_reason"] == "stop":
            jsonschema.validate(json.loads(rec["text"]), schema)
        else:  # cut by the budget: a prefix of a valid document
            assert rec["text"].lstrip().startswith("{")


def test_a_token_the_grammar_forbids_is_refused_not_an_abort(smollm2):
    import numpy as np

    from led_local.llama.grammar import Grammar, GrammarState
    from led_local.llama.runtime import Runtime

    with Runtime(smollm2, vocab_only=True) as rt:
        g = GrammarState(Grammar('root ::= "a"'), rt.vocab)
        logits = np.zeros(rt.n_vocab, np.float32)
        g.mask(logits)
        b = rt.tokenize("b", special=False, bos=False)[0]
        a = rt.tokenize("a", special=False, bos=False)[0]
        assert logits[b] == -np.inf and np.isfinite(logits[a])
        with pytest.raises(LedError, match="not allowed by the grammar"):
            g.accept(b)
        g.accept(a)
        g.close()


def test_schema_strings_keep_control_characters_out(smollm2):
    """llama-cpp-python's converter lets a raw newline into a string; JSON does not."""
    import numpy as np

    from led_local.decoding.tool_calls import tool_grammar
    from led_local.llama.grammar import Grammar, GrammarState
    from led_local.llama.runtime import Runtime

    with Runtime(smollm2, vocab_only=True) as rt:
        def allowed_after(grammar: Grammar, text: str) -> dict[str, bool]:
            g = GrammarState(grammar, rt.vocab)
            for t in rt.tokenize(text, special=False, bos=False):
                g.mask(np.zeros(rt.n_vocab, np.float32))
                g.accept(t)
            logits = np.zeros(rt.n_vocab, np.float32)
            g.mask(logits)
            g.close()
            return {c: bool(np.isfinite(logits[rt.tokenize(c, special=False, bos=False)[0]]))
                    for c in ("\n", "\t", "a", '"', "\\")}

        assert allowed_after(Grammar.from_schema({"type": "string"}), '"x') == \
            {"\n": False, "\t": False, "a": True, '"': True, "\\": True}
        from led_local.decoding import chatformat
        from led_local.decoding.tool_calls import SYNTAXES

        fn = {"name": "f", "parameters": {"type": "object", "properties": {
            "s": {"type": "string"}}, "required": ["s"]}}
        g = tool_grammar(SYNTAXES["hermes"], [fn], fmt=chatformat.PLAIN, scope=chatformat.MODEL)
        assert allowed_after(g, '<tool_call>\n{"name": "f", "arguments": {"s": "x')["\n"] is False
