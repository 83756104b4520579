"""The server's streamed text: UTF-8 safety, held-back stop strings, the reasoning split."""

from __future__ import annotations

import pytest

from led_local.decoding.chatformat import INSIDE
from led_local.decoding.think_tags import DEEPSEEK
from led_local.serve.text import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> list[str]:
    out = [stream.feed(p) for p in pieces]
    out.append(stream.finish())
    return out


def test_a_character_split_across_tokens_waits_for_its_last_byte():
    snow = "☃".encode()  # 3 bytes
    out = feed_all(TextStream([]), [b"a", snow[:1], snow[1:2], snow[2:] + b"b"])
    assert out == ["a", "", "", "☃b", ""]


def test_an_unfinished_character_at_the_end_becomes_a_replacement():
    out = feed_all(TextStream([]), [b"x", "é".encode()[:1]])
    assert "".join(out) == "x\ufffd"


def test_a_stop_string_across_tokens_is_held_back_and_cut():
    s = TextStream(["END"])
    assert s.feed(b"hello E") == "hello "  # "E" may start the stop string
    assert s.feed(b"N") == ""
    assert s.feed(b"D more") == ""
    assert s.stopped and s.text == "hello " and s.finish() == ""


def test_text_that_turns_out_not_to_stop_is_released():
    s = TextStream(["END"])
    assert s.feed(b"an E") == "an "
    assert s.feed(b"Ngine") == "ENgine"
    assert s.finish() == ""


def test_the_earliest_of_several_stop_strings_wins():
    s = TextStream(["world", "lo"])
    assert feed_all(s, [b"hello world"]) == ["hel", ""]


@pytest.mark.parametrize("chunks", [["<think>a plan</think>\n\nThe answer"],
                                    ["<th", "ink>a pl", "an</th", "ink>", "\n\nThe ", "answer"]])
def test_reasoning_split_in_any_chunking(chunks):
    r = DEEPSEEK.splitter()
    parts = [r.feed(c) for c in chunks] + [r.finish()]
    assert "".join(p.reasoning for p in parts) == "a plan"
    assert "".join(p.content for p in parts) == "The answer"


def test_no_think_block_is_all_content_and_an_open_prompt_starts_in_reasoning():
    r = DEEPSEEK.splitter()
    parts = [r.feed("<b>bold</b>"), r.finish()]
    assert "".join(p.content for p in parts) == "<b>bold</b>"
    r = DEEPSEEK.splitter(scope=INSIDE)
    parts = [r.feed("hmm</think>ok"), r.finish()]
    assert [p.reasoning for p in parts][0] == "hmm" and parts[0].content == "ok"
