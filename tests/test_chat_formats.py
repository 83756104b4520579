"""Chat formats as units: one place decides a model's format, and the format decides where
LED's scope ends and where solve reads the answer (unless --think-end says otherwise)."""

from __future__ import annotations

import json

import pytest
import tinymodel
from click.testing import CliRunner

from led_local.cli import main
from led_local.decoding import chatformat
from led_local.decoding.chatformat import ScopeEnd
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
