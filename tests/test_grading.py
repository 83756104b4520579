"""Answer extraction (pure strings) and the math-verify Grader (worker process)."""

from __future__ import annotations

import threading
import time

import pytest

from led_local.errors import LedError
from led_local.eval.grading import Grader, extract_answer, split_thinking


def test_split_thinking_uses_last_marker():
    assert split_thinking("a</think>b</think>c") == ("a</think>b", "c")
    assert split_thinking("no marker") == ("", "no marker")
    assert split_thinking("x<end>y", think_end="<end>") == ("x", "y")
    with pytest.raises(LedError, match="think_end"):
        split_thinking("x", think_end="")


def test_boxed_with_nested_braces():
    assert extract_answer(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert extract_answer(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_answer(r"\fbox{ 7 }") == "7"


def test_last_boxed_wins_and_unclosed_is_skipped():
    assert extract_answer(r"\boxed{1} then \boxed{2}") == "2"
    assert extract_answer(r"\boxed{3} and a truncated \boxed{4") == "3"


def test_thinking_is_not_the_answer():
    text = r"<think>maybe \boxed{1}, or 7</think>The answer is \boxed{2}."
    assert extract_answer(text) == "2"
    # An answer part with nothing in it gives None, not a guess from the thinking.
    assert extract_answer(r"<think>\boxed{1} 42</think>  ") is None


def test_phrase_fallbacks():
    assert extract_answer("So the final answer is $42$.") == "42"
    assert extract_answer("Answer: 3/4") == "3/4"
    assert extract_answer("**Final Answer:** 12") == "12"
    assert extract_answer("I think the answer is 5. Because 2+3.") == "5"


def test_gsm8k_hashes():
    assert extract_answer("3 + 4 = 7 apples\n#### 7") == "7"
    assert extract_answer("#### 2,125\n") == "2,125"


def test_last_number_fallback():
    assert extract_answer("first 3, then -12.5 and finally 2,125 left") == "2,125"
    assert extract_answer("she has -4 coins") == "-4"
    assert extract_answer("pages 3-5") == "5"
    assert extract_answer("it is 17.") == "17"


def test_none_when_nothing_found():
    assert extract_answer("no idea at all") is None
    assert extract_answer("") is None
    assert extract_answer(r"\boxed{}") is None


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout_s=3.0) as g:
        yield g


@pytest.mark.parametrize(
    ("gold", "pred", "expected"),
    [
        ("2,125", "2125", True),
        ("2125", "2,125", True),
        ("1/2", "0.5", True),
        (r"\frac{1}{2}", "0.5", True),
        (r"\dfrac{3}{4}", "0.75", True),
        (r"\sqrt{2}", "2^{1/2}", True),
        ("3", "4", False),
        ("Monday", "Mondya", False),
        ("x^2+1", "1+x^2", True),
        ("18", r"\$18", True),
        ("1,2", "2,1", True),
    ],
)
def test_equivalence(grader, gold, pred, expected):
    assert grader.is_correct(gold, pred) is expected


def test_none_gold_and_none_prediction(grader):
    assert grader.is_correct(None, "3") is None
    assert grader.is_correct("3", None) is False
    assert grader.equivalent("0.5", r"\frac{1}{2}") is True


def test_pathological_answer_times_out_and_grader_recovers():
    with Grader(timeout_s=1.0) as g:
        assert g.is_correct("1", "1/1") is True  # worker started and warm
        start = time.monotonic()
        assert g.is_correct("2", "9^{9^{9^{9^{9}}}}") is False
        assert time.monotonic() - start < 3.0
        assert g.is_correct("1/2", "0.5") is True  # a fresh worker took over


def test_worker_killed_between_calls_is_replaced():
    with Grader(timeout_s=3.0) as g:
        assert g.is_correct("1/3", "2/6") is True
        g._process.kill()
        g._process.join()
        assert g.is_correct(r"\sqrt{4}", "2") is True


def test_grader_from_a_non_main_thread(grader):
    out = {}

    def work():
        out["ok"] = grader.is_correct(r"\frac{2}{3}", "4/6")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert out == {"ok": True}


def test_invalid_timeout():
    with pytest.raises(LedError, match="timeout_s"):
        Grader(timeout_s=0)


@pytest.mark.parametrize("text, expected", [
    ("So the answer is 18 dollars.", "18"),
    ("The final answer is 400 / 360 = 0.125 dollars.", "0.125"),
    ("Answer: x = 5", "5"),
    ("The answer is $1,250 per month.", "1,250"),
    ("The answer is \\frac{a}{b} = c", "\\frac{a}{b} = c"),
])
def test_phrase_answers_drop_units_and_working(text, expected):
    assert extract_answer(text) == expected
