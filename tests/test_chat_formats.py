"""Chat formats as units: one place decides a model's format, and the format decides where
LED's scope ends and where solve reads the answer (unless --think-end says otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tinymodel
from click.testing import CliRunner

from led_local.cli import main
from led_local.decoding import chatformat, switches
from led_local.decoding.chatformat import CLOSED, INSIDE, MODEL, ScopeEnd
from led_local.decoding.engine import Engine
from led_local.decoding.methods import DecodeConfig
from led_local.errors import ConfigError

THINKING = tinymodel.CHATML_TEMPLATE.replace("assistant\\n", "assistant\\n<think>\\n")


class FakeRuntime:
    def __init__(self, vocab: dict[str, list[int]], added: frozenset[int] = frozenset({42})):
        self.vocab = vocab
        self.added = added

    def tokenize(self, text: str, *, special: bool, bos: bool) -> list[int]:
        assert special and not bos
        return self.vocab[text]

    def is_added(self, token: int) -> bool:
        return token in self.added


def test_the_scope_ends_at_a_one_token_marker_or_where_the_text_holds_it():
    # an ordinary one-token marker (a space) is found in other tokens' text too
    assert ScopeEnd.of(FakeRuntime({" ": [7]}), " ").token is None
    one = ScopeEnd.of(FakeRuntime({"</think>": [42]}), "</think>")
    assert one.token == 42
    assert one.advance("", 41, "</think>") == ("", False)  # spelled out: not the marker token
    assert one.advance("", 42, "</think>")[1]
    many = ScopeEnd.of(FakeRuntime({"</think>": [1, 2, 3]}), "</think>")
    assert many.token is None
    tail, ended = many.advance("", 1, "</th")
    assert not ended
    assert many.advance(tail, 2, "ink>") == ("</think>", True)
    assert ScopeEnd.of(FakeRuntime({}), "") is None


def test_one_function_decides_the_format():
    class Info:
        chat_template = THINKING

    assert chatformat.for_model(Info()).name == "deepseek"
    Info.chat_template = None
    assert chatformat.for_model(Info()) is chatformat.PLAIN
    assert chatformat.for_model(Info(), "deepseek").name == "deepseek"
    with pytest.raises(ConfigError) as e:
        chatformat.for_model(Info(), "harmony-ish")
    assert e.value.option == "reasoning_format"


def test_an_architecture_that_always_writes_one_format_gets_it_without_a_template():
    class Info:
        chat_template = None
        architecture = "gpt-oss"

    assert chatformat.for_model(Info()).name == "harmony"
    Info.chat_template = THINKING  # the template's own markers win
    assert chatformat.for_model(Info()).name == "deepseek"
    Info.architecture, Info.chat_template = "llama", None
    assert chatformat.for_model(Info()) is chatformat.PLAIN


def test_a_config_takes_the_formats_marker_only_where_none_was_given():
    fmt = chatformat.get("deepseek")
    assert DecodeConfig().with_format(fmt).think_end == "</think>"
    assert DecodeConfig().with_format(chatformat.PLAIN).think_end == ""
    assert DecodeConfig(think_end="").with_format(fmt).think_end == ""
    assert DecodeConfig(think_end="END").with_format(chatformat.PLAIN).think_end == "END"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    return (tinymodel.write_tiny_llama(d / "think.gguf", seed=1, chat_template=THINKING).path,
            tinymodel.write_tiny_llama(d / "plain.gguf", seed=1).path)


def test_the_engine_holds_the_format_and_fills_the_marker(models):
    think, plain = models
    with Engine(think, DecodeConfig(method="greedy"), n_ctx=64) as e:
        assert e.format.name == "deepseek" and e.cfg.think_end == "</think>"
        # a sequence's own configuration is completed the same way
        seq = e.new_sequence(0, seed=(1,), max_tokens=2, cfg=DecodeConfig(method="greedy"))
        assert seq.cfg.think_end == "</think>"
    with Engine(plain, DecodeConfig(method="greedy"), n_ctx=64) as e:
        assert e.format is chatformat.PLAIN and e.cfg.think_end == ""
        assert e.scope_end(e.cfg) is None
        # a control token ends the scope at the token, an ordinary one-token word by text
        marker = e.scope_end(DecodeConfig(method="greedy", think_end="<|im_start|>"))
        assert marker.token == e.rt.tokenize("<|im_start|>", special=True, bos=False)[0]
        word = e.rt.token_text(e.rt.tokenize(" hello", special=True, bos=False)[-1])
        assert e.scope_end(DecodeConfig(method="greedy", think_end=word)).token is None
    with Engine(plain, DecodeConfig(method="greedy"), n_ctx=64,
                reasoning_format="deepseek") as e:
        assert e.cfg.think_end == "</think>"
        assert e.scope_end(e.cfg).marker == "</think>"


def _params(args: list[str], tmp_path) -> dict:
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "a", "question": "hello", "answer": "1"}) + "\n")
    out = tmp_path / "run.jsonl"
    out.unlink(missing_ok=True)
    r = CliRunner().invoke(main, ["solve", *args, str(problems), "-o", str(out), "-n", "1",
                                  "--max-tokens", "3", "-m", "led", "--led-depths", "2",
                                  "--seed", "1"])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text().splitlines()[0])["params"]


def test_solve_records_the_marker_of_the_format(models, tmp_path):
    think, plain = models
    assert _params([str(think)], tmp_path)["led_think_end"] == "</think>"
    assert _params([str(plain)], tmp_path)["led_think_end"] == ""
    assert _params([str(plain), "--reasoning-format", "deepseek"],
                   tmp_path)["led_think_end"] == "</think>"
    assert _params([str(think), "--reasoning-format", "none"], tmp_path)["led_think_end"] == ""
    assert _params([str(think), "--think-end", "END"], tmp_path)["led_think_end"] == "END"


@pytest.mark.parametrize("command", ["generate", "chat", "solve", "serve", "inspect"])
def test_every_command_that_renders_a_chat_takes_the_reasoning_format(command):
    r = CliRunner().invoke(main, [command, "--help"])
    assert "--reasoning-format" in r.output


TEMPLATES = (Path(__file__).resolve().parents[1] / "build" / "llama_cpp_python-0.3.36" /
             "vendor" / "llama.cpp" / "models" / "templates")
# llama.cpp's templates: format detected, where the prompt leaves thinking with led-local's
# default variables (thinking on where there is a switch) and with --thinking off (None:
# no switch, refused)
VENDORED = {
    "Qwen-Qwen3-0.6B": ("deepseek", MODEL, CLOSED),
    "Qwen3.5-4B": ("deepseek", INSIDE, CLOSED),
    "Qwen-QwQ-32B": ("deepseek", INSIDE, CLOSED),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ("deepseek", INSIDE, CLOSED),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ("deepseek", INSIDE, None),
    "deepseek-ai-DeepSeek-V3.1": ("deepseek", INSIDE, CLOSED),
    "deepseek-ai-DeepSeek-V3.2": ("deepseek", INSIDE, CLOSED),
    "deepseek-ai-DeepSeek-V4": ("deepseek", INSIDE, CLOSED),
    "HuggingFaceTB-SmolLM3-3B": ("deepseek", MODEL, CLOSED),
    "GLM-4.6": ("deepseek", MODEL, CLOSED),
    "GLM-4.7-Flash": ("deepseek", INSIDE, CLOSED),
    "Kimi-K2-Thinking": ("deepseek", MODEL, None),
    "MiniMax-M2": ("deepseek", INSIDE, None),
    "NVIDIA-Nemotron-Nano-v2": ("deepseek", INSIDE, None),
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": ("deepseek", INSIDE, CLOSED),
    "StepFun3.5-Flash": ("deepseek", INSIDE, None),
    "openbmb-MiniCPM5-1B": ("deepseek", INSIDE, CLOSED),
    "openai-gpt-oss-120b": ("harmony", MODEL, None),
    "ByteDance-Seed-OSS": ("seed", MODEL, CLOSED),
    "mistralai-Ministral-3-14B-Reasoning-2512": ("mistral-think", MODEL, None),
    "ibm-granite-granite-3.3-2B-Instruct": ("granite", MODEL, MODEL),
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": ("cohere", MODEL, CLOSED),
    "Cohere2MoE": ("cohere", INSIDE, None),
    "Apriel-1.6-15b-Thinker-fixed": ("apriel", INSIDE, None),
    "unsloth-Apriel-1.5": ("apriel", MODEL, None),
    "google-gemma-4-31B-it": ("gemma4", MODEL, CLOSED),
    "tencent-Hy3": ("hunyuan", CLOSED, None),
    "Kimi-K3": ("kimi-k3", INSIDE, MODEL),
    "Qwen-Qwen2.5-7B-Instruct": ("none", INSIDE, None),
    "meta-llama-Llama-3.1-8B-Instruct": ("none", INSIDE, None),
    "Mistral-Small-3.2-24B-Instruct-2506": ("none", INSIDE, None),
}


@pytest.mark.skipif(not TEMPLATES.is_dir(), reason="llama.cpp's sources are not built")
@pytest.mark.parametrize("name", sorted(VENDORED))
def test_every_vendored_template_is_read_right(name):
    from led_local.llama.template import render_chat_template

    text = (TEMPLATES / f"{name}.jinja").read_text()
    fmt = chatformat.detect(text)
    want, on, off = VENDORED[name]
    assert fmt.name == want
    sw = switches.template_switches(text)

    def scope(thinking):
        v = switches.chat_variables(text, thinking=thinking, switches=sw)
        return fmt.prompt_scope(render_chat_template(text, switches.PROBE, bos_token="",
                                                     eos_token="", variables=v))

    assert scope(None) == on
    if off is None:
        with pytest.raises(ConfigError) as e:
            scope(False)
        assert e.value.option == "thinking"
    else:
        assert scope(False) == off


def test_the_switches_are_found_by_rendering():
    both = ("{% if enable_thinking is defined and not enable_thinking %}<think></think>"
            "{% endif %}{{ messages[0].content }}")
    assert [s.variable for s in switches.template_switches(both).thinking] == ["enable_thinking"]
    # a variable the template names but never turns on anything is no switch
    inert = "{% set enable_thinking = true %}{{ messages[0].content }}"
    assert switches.template_switches(inert).thinking == ()
    assert switches.chat_variables(both) == {"enable_thinking": True}
    assert switches.chat_variables(both, thinking=False) == {"enable_thinking": False}
    assert switches.chat_variables(both, kwargs={"enable_thinking": False, "x": 1}) == \
        {"enable_thinking": False, "x": 1}
    with pytest.raises(ConfigError):
        switches.chat_variables(inert, reasoning_effort="high")
    with pytest.raises(ConfigError):
        switches.parse_kwargs("[1]")


def test_a_scope_the_model_opens_starts_after_its_marker():
    from led_local.diagnostics.inspect import scope_flags

    fmt = chatformat.get("deepseek")
    end = ScopeEnd("</think>")
    pieces = [" ", "<th", "ink>", "a", "</think>", "b"]
    assert scope_flags(list(range(6)), pieces, end, start=MODEL, fmt=fmt) == \
        [False, False, False, True, True, False]
    # a response that starts with anything else is never in scope
    assert scope_flags([0, 1, 2], ["x", "<think>", "y"], end, start=MODEL, fmt=fmt) == \
        [False, False, False]
    assert scope_flags([0, 1], ["a", "b"], end, start=CLOSED, fmt=fmt) == [False, False]
    h = chatformat.get("harmony")
    assert h.opening("<|start|>assistant<|channel|>analysis<|message|>") is True
    assert h.opening("<|channel|>analy") is None
    assert h.opening("<|channel|>final<|message|>") is False
    assert h.prompt_scope("x<|start|>assistant") == MODEL
    assert h.prompt_scope("x<|start|>assistant<|channel|>final<|message|>") == CLOSED


def test_the_engine_starts_where_the_prompt_leaves_the_response(models):
    think, plain = models
    with Engine(think, DecodeConfig(method="greedy"), n_ctx=64) as e:
        ids = e.rt.tokenize
        assert e.scope(e.cfg, ids("hi<think>\n", special=True, bos=False)) == INSIDE
        assert e.scope(e.cfg, ids("hi<think></think>\n", special=True, bos=False)) == CLOSED
        assert e.scope(e.cfg, ids("hi\n", special=True, bos=False)) == MODEL
        # another marker than the format's, or '': in scope from the first token
        assert e.scope(DecodeConfig(method="greedy", think_end=""), ids("hi\n")) == INSIDE
        seq = e.new_sequence(0, seed=(1,), max_tokens=2, prompt=ids("hi\n"))
        assert seq.scope_wait and not seq.in_scope
    with Engine(plain, DecodeConfig(method="greedy"), n_ctx=64) as e:
        assert e.scope(e.cfg, e.rt.tokenize("hi")) == INSIDE
