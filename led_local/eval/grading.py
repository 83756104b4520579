"""Answer extraction from model output and math-equivalence grading.

Extraction is pure string work. Equivalence uses the `math-verify` package, run in a
separate worker process so that a pathological answer (a tower of exponents, deep
nesting) can neither hang nor crash the caller: a call that runs past its timeout kills
the worker and counts as "not correct". The module knows nothing about models or
sampling.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import multiprocessing as mp
import re
import signal
import threading
from decimal import Decimal, InvalidOperation
from multiprocessing.connection import Connection
from types import TracebackType

from led_local.errors import LedError

__all__ = ["Grader", "GraderError", "extract_answer", "split_thinking"]


class GraderError(LedError):
    """The grading worker could not be started (math-verify missing or broken)."""


def split_thinking(text: str, *, think_end: str = "</think>") -> tuple[str, str]:
    """Split model output into (thinking, answer_part) at the LAST `think_end`.

    Without the marker, thinking is "" and the whole text is the answer part.
    """
    if not think_end:
        raise LedError("think_end must be a non-empty string, got ''")
    thinking, marker, answer = text.rpartition(think_end)
    if not marker:
        return "", text
    return thinking, answer


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "final answer" counts only when "is", ":" or "=" follows ("the final answer to ..." does not)
_PHRASE = re.compile(r"(?:final answer[\s*]*(?:is\b|:|=)|the answer is|answer\s*:)[\s*]*:?(.*)",
                     re.I)
_HASHES = re.compile(r"####\s*(.*)")
# Thousands-grouped or plain numbers; a minus glued to a preceding word/digit is a hyphen.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")
_PLAIN_WORD = re.compile(r"[A-Za-z]{2,}")
_HAS_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\boxed|\\\(|\\\[")  # `\$` is a dollar sign


MAX_ANSWER_CHARS = 1000  # a longer candidate is not taken as an answer


def _closing_braces(text: str) -> dict[int, int]:
    """{index of '{': index of its matching '}'} for every closed group, in one pass; `\\{`
    and `\\}` are literal braces, not grouping."""
    stack: list[int] = []
    close: dict[int, int] = {}
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            close[stack.pop()] = i
        i += 1
    return close


def _clean(answer: str) -> str | None:
    """Strip whitespace, `$`, `\\(...\\)`, markdown bold and a trailing period; None if empty."""
    prev = None
    while prev != answer:
        prev = answer
        answer = answer.strip().strip("$*").strip()
        if answer.startswith("\\(") and answer.endswith("\\)"):
            answer = answer[2:-2]
        if answer.endswith(".") and not answer.endswith(".."):
            answer = answer[:-1]
    return answer or None


def _first_line(rest: str) -> str:
    return rest.split("\n", 1)[0]


# "18 dollars", "$0.125 per day": a number followed by plain words (units)
_NUMBER_THEN_WORDS = re.compile(r"\$?\s*(-?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s+[A-Za-z][A-Za-z .'-]*")


def _first_clause(rest: str) -> str:
    """The phrase fallback's answer: up to the end of the line or of the sentence; of a
    worked equation its result ("40 / 2 = 20" -> "20"), of a number with units the number."""
    clause = re.split(r"\.\s|;\s", _first_line(rest), maxsplit=1)[0]
    if "=" in clause and "\\" not in clause:  # plain arithmetic, not LaTeX
        clause = clause.rsplit("=", 1)[1]
    match = _NUMBER_THEN_WORDS.fullmatch(clause.strip().rstrip("."))
    return match.group(1) if match else clause


def extract_answer(text: str, *, think_end: str = "</think>") -> str | None:
    """The final answer in model output, looked for in the answer part only.

    The thinking (text before the last `think_end`) is never used: if the answer part holds
    nothing, the result is None. In order of preference: the content of the last balanced
    `\\boxed{...}` / `\\fbox{...}`; the last "final answer is X" / "the answer is X" /
    "answer: X" phrase ("final answer" only when "is", ":" or "=" follows it); the last
    "#### X" line (GSM8K); the last number. Linear time in the text; a candidate longer
    than MAX_ANSWER_CHARS (1000) is passed over. Numbers are kept
    as written ("2,125" stays "2,125": the Grader treats thousands separators as equal).
    Surrounding whitespace, `$` and a trailing period are stripped.
    """
    answer_part = split_thinking(text, think_end=think_end)[1]
    close = _closing_braces(answer_part)
    for match in reversed(list(_BOXED.finditer(answer_part))):
        end = close.get(match.end() - 1)
        if end is None or end - match.end() > MAX_ANSWER_CHARS:
            continue
        if (cleaned := _clean(answer_part[match.end():end])) is not None:
            return cleaned
    for pattern, take in ((_PHRASE, _first_clause), (_HASHES, _first_line)):
        for match in reversed(list(pattern.finditer(answer_part))):
            candidate = take(match.group(1)[: MAX_ANSWER_CHARS + 1])
            if len(candidate) <= MAX_ANSWER_CHARS and (cleaned := _clean(candidate)) is not None:
                return cleaned
    numbers = _NUMBER.findall(answer_part)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> Decimal | None:
    """`text` as a Decimal when it is a plain number (commas as thousands separators)."""
    compact = re.sub(r"\s+|\\[,!; ]", "", text).strip("$")
    if not _PLAIN_NUMBER.fullmatch(compact):
        return None
    try:
        return Decimal(compact.replace(",", ""))
    except InvalidOperation:
        return None


def _fast_verdict(gold: str, pred: str) -> bool | None:
    """A verdict that needs no math-verify, or None to ask the worker."""
    a, b = _as_number(gold), _as_number(pred)
    if a is not None and b is not None:
        if a == b:
            return True
        if a == a.to_integral_value() and b == b.to_integral_value():
            return False  # distinct integers; decimals go to math-verify's rounding rules
    # math-verify reads a bare word as a product of symbols ("dog" == "god").
    if _PLAIN_WORD.fullmatch(gold.strip()) and _PLAIN_WORD.fullmatch(pred.strip()):
        return gold.strip().casefold() == pred.strip().casefold()
    return None


def _worker_main(conn: Connection) -> None:
    """Worker loop: receive (gold, pred), send bool; None or a closed pipe ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    from math_verify import parse, verify

    @functools.lru_cache(maxsize=4096)
    def parsed(text: str) -> list:
        # Timeouts off: math-verify's own use signal.alarm; the parent enforces ours.
        if not _HAS_MATH_DELIMITER.search(text):
            wrapped = parse(f"${text}$", parsing_timeout=None)
            if wrapped:
                return wrapped
        return parse(text, parsing_timeout=None)

    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        gold, pred = message
        try:
            g, p = parsed(gold), parsed(pred)
            if g and p:
                ok = bool(verify(g, p, timeout_seconds=None))
            else:  # unparseable: fall back to whitespace-insensitive string equality
                ok = " ".join(gold.split()) == " ".join(pred.split())
        except Exception:  # any failure inside math-verify means "not equal"
            ok = False
        conn.send(ok)


class Grader:
    """Decides whether a predicted answer matches the gold answer, via math-verify.

    Use as a context manager: `with Grader(timeout_s=5.0) as g: g.is_correct("2,125", "2125")`.
    The worker process starts lazily on the first call that needs it. Each check that
    runs past `timeout_s` seconds (default 5.0) kills the worker (a fresh one starts on the
    next call) and counts as False. `startup_timeout_s` (default 60.0) bounds the worker's
    start-up (importing sympy). Results are cached per (gold, pred). Thread-safe: calls
    from several threads are serialised. The worker is spawned, so a script using it
    needs an `if __name__ == "__main__":` guard.
    """

    def __init__(self, *, timeout_s: float = 5.0, startup_timeout_s: float = 60.0) -> None:
        if not timeout_s > 0:
            raise LedError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
        if not startup_timeout_s > 0:
            raise LedError(f"startup_timeout_s must be > 0 seconds, got {startup_timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self._cache: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self._process: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def __enter__(self) -> Grader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def is_correct(self, gold: str | None, predicted: str | None) -> bool | None:
        """True if `predicted` is equivalent to `gold`; None when gold is None (ungradable),
        False when predicted is None, on timeout, or on any failure inside math-verify."""
        if gold is None:
            return None
        if predicted is None:
            return False
        return self._check(gold, predicted)

    def equivalent(self, a: str, b: str) -> bool:
        """Whether two answers are equivalent (`a` is read as the reference); for grouping
        sampled answers in a majority vote."""
        return self._check(a, b)

    def close(self) -> None:
        """Stop the worker process, if any. The grader can still be used afterwards."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send(None)
            self._stop(grace_s=1.0)

    def _check(self, gold: str, pred: str) -> bool:
        key = (gold, pred)
        if key not in self._cache:
            verdict = _fast_verdict(gold, pred)
            self._cache[key] = verdict if verdict is not None else self._ask(gold, pred)
        return self._cache[key]

    def _ask(self, gold: str, pred: str) -> bool:
        with self._lock:
            if self._process is not None and not self._process.is_alive():
                self._stop(grace_s=0.0)  # died between calls (e.g. killed from outside)
            conn = self._conn if self._conn is not None else self._start()
            try:
                conn.send((gold, pred))
                if conn.poll(self.timeout_s):
                    return bool(conn.recv())
            except (EOFError, OSError):
                pass  # the worker died on this input (e.g. stack overflow)
            self._stop(grace_s=0.0)
            return False

    def _start(self) -> Connection:
        if importlib.util.find_spec("math_verify") is None:
            raise GraderError("grading needs the math-verify package: pip install math-verify")
        ctx = mp.get_context("spawn")  # fork would copy llama.cpp state and threads
        parent_conn, child_conn = ctx.Pipe()
        process = ctx.Process(
            target=_worker_main, args=(child_conn,), daemon=True, name="led-local-grader"
        )
        # an ignored SIGINT survives exec and Python keeps it ignored: a Ctrl-C while the
        # worker imports cannot kill it (only the main thread may change handlers)
        main_thread = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:
            process.start()
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, old)
        child_conn.close()
        self._process, self._conn = process, parent_conn
        try:
            ready = parent_conn.poll(self.startup_timeout_s) and parent_conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            process.join(0.5)
            exitcode = process.exitcode
            self._stop(grace_s=0.0)
            if exitcode is not None and exitcode < 0:
                raise GraderError(
                    f"the math-verify grading worker was killed by signal {-exitcode} while "
                    "starting")
            if exitcode is None:
                raise GraderError(
                    f"the math-verify grading worker did not start within "
                    f"{self.startup_timeout_s} s (raise startup_timeout_s on a slow machine)"
                )
            raise GraderError(
                f"the math-verify grading worker exited with code {exitcode} while starting; "
                "a script that uses Grader needs an `if __name__ == '__main__':` guard, "
                "since the spawned worker re-imports the main module"
            )
        return parent_conn

    def _stop(self, *, grace_s: float) -> None:
        """Join the worker for up to `grace_s` seconds, then kill it; forget it either way."""
        if self._process is not None:
            self._process.join(grace_s)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None
