"""Run-file records: reading with type checks, duplicate detection and problem hashes.

A record is one JSON object per line. Its types are checked on every read: ``problem_id`` a
non-empty string, ``sample`` a non-negative integer, ``correct`` true/false/null, ``answer``
and ``gold`` a string or null, ``problem_hash`` a string. Errors name the file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from led_local.errors import LedError

# How every record written by led-local begins (``problem_id`` is its first key).
RECORD_PREFIX = b'{"problem_id": '


def problem_hash(question: str, gold: str | None, prompt: str) -> str:
    """A short hash of what defines a problem for a run: its question, its gold answer and
    the full prompt the model sees (16 hex digits of sha256)."""
    data = json.dumps([question, gold, prompt], ensure_ascii=False).encode("utf-8", "replace")
    return hashlib.sha256(data).hexdigest()[:16]


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (newline removed) and the tail after the last newline (b"" if none)."""
    lines = data.split(b"\n")
    return lines[:-1], lines[-1]


def parses(line: bytes) -> bool:
    """Whether ``line`` is one complete JSON value."""
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


def is_record_line(line: bytes) -> bool:
    """Whether ``line`` is a JSON object with the keys every record has."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and "problem_id" in obj and "sample" in obj


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_record(rec: object) -> str | None:
    """What is wrong with one decoded record, or None."""
    if not isinstance(rec, dict) or "problem_id" not in rec or "sample" not in rec:
        return "not a led-local sample record"
    pid, sample = rec["problem_id"], rec["sample"]
    if not isinstance(pid, str) or not pid:
        return f"'problem_id' must be a non-empty string, got {_show(pid)}"
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
        return f"'sample' must be a non-negative integer, got {_show(sample)}"
    if rec.get("correct") is not None and not isinstance(rec["correct"], bool):
        return f"'correct' must be true, false or null, got {_show(rec['correct'])}"
    for key in ("answer", "gold", "problem_hash"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            return f"{key!r} must be a string or null, got {_show(rec[key])}"
    return None


def read_records(path: str | os.PathLike, *, tolerate_torn_tail: bool = True) -> list[dict]:
    """All records of a run file, validated (see the module docstring); a duplicated
    (problem_id, sample) pair is an error naming both lines. A last line without its newline
    is read when it is a complete record; a torn one (a write cut short) is ignored unless
    ``tolerate_torn_tail`` is off."""
    p = Path(path)
    if not p.exists():
        raise LedError(f"run file not found: {p}")
    if not p.is_file():
        raise LedError(f"not a regular file, so not a run file: {p}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LedError(f"cannot read the run file {p}: {e.strerror}") from None
    lines, tail = split_lines(data)
    if tail.strip() and parses(tail):
        lines, tail = [*lines, tail], b""
    records: list[dict] = []
    seen: dict[tuple[str, int], int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            raise LedError(
                f"{p}:{lineno}: not a JSON record; is this a led-local run file?") from None
        problem = check_record(rec)
        if problem is not None:
            raise LedError(f"{p}:{lineno}: {problem}")
        key = (rec["problem_id"], rec["sample"])
        if key in seen:
            raise LedError(f"{p}:{lineno}: duplicate record for problem {key[0]!r} sample "
                           f"{key[1]} (first on line {seen[key]})")
        seen[key] = lineno
        records.append(rec)
    if tail.strip() and not tolerate_torn_tail:
        raise LedError(f"{p}: the last line is incomplete")
    return records


def check_not_input(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], *,
                    option: str) -> None:
    """Refuse an output path that names one of the command's inputs (``{what: path}``)."""
    out = Path(output)
    for what, path in inputs.items():
        if path is None:
            continue
        src = Path(path)
        try:
            same = out.exists() and src.exists() and os.path.samefile(out, src)
        except OSError:
            same = False
        if same or out.resolve() == src.resolve():
            raise LedError(f"{option} {out} is {what}: an output never overwrites an input; "
                           "choose another path")
