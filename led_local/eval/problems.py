"""Problem files (JSONL ``{"id", "question", "answer"}``) and the prompts built from them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from led_local.errors import LedError

# The reference's math prompt (LED.md), followed by the question, through the chat template.
REFERENCE_PROMPT = ("Please reason step by step, and put your final answer within \\boxed{}."
                    "\n{question}")


# Problem sets shipped inside the package (led_local/data), usable by name; checked by sha256.
BUNDLED = {
    "gsm8k": ("gsm8k.jsonl", "fe9e73ac6ed5df4a9214d344f7f643f31e53c163ca1070288ea7f1f0e38ba9cc"),
}


def resolve_problems(name_or_path: str | os.PathLike) -> Path:
    """A problem file's path: an existing file as given, else a bundled set by name."""
    p = Path(name_or_path)
    if p.exists() or str(name_or_path) not in BUNDLED:
        return p
    filename, sha256 = BUNDLED[str(name_or_path)]
    path = Path(str(resources.files("led_local") / "data" / filename))
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise LedError(f"the bundled problem set {name_or_path!r} is missing or damaged "
                       f"({path}); reinstall led-local")
    return path


@dataclass(frozen=True)
class Problem:
    """One problem; ``answer`` is None when the file gives no gold answer; ``extra`` keeps
    every other field of the line."""

    id: str
    question: str
    answer: str | None
    extra: dict = field(default_factory=dict)


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """Read and validate a JSONL problem file.

    Errors name the file and line: malformed JSON, a line that is not an object, a missing or
    non-string id/question, a duplicate id; an empty file is an error too.
    ``path`` may also name a bundled set (``gsm8k``).
    """
    p = resolve_problems(path)
    if not p.is_file():
        known = ", ".join(sorted(BUNDLED))
        raise LedError(f"problem file not found: {p} (bundled sets: {known})")
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise LedError(f"{p}:{lineno}: not UTF-8 text (byte {e.start + 1} of the "
                               "line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LedError(f"{p}:{lineno}: malformed JSON ({e.msg})") from None
            except RecursionError:
                raise LedError(f"{p}:{lineno}: JSON nested too deeply") from None
            if not isinstance(obj, dict):
                raise LedError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            for key in ("id", "question"):
                if key not in obj:
                    raise LedError(f"{p}:{lineno}: missing field '{key}'")
            pid, question = obj.pop("id"), obj.pop("question")
            if isinstance(pid, int) and not isinstance(pid, bool):
                pid = str(pid)
            if not isinstance(pid, str) or not pid:
                raise LedError(f"{p}:{lineno}: 'id' must be a non-empty string, got {pid!r}")
            if not isinstance(question, str):
                raise LedError(f"{p}:{lineno}: 'question' must be a string")
            if pid in seen:
                raise LedError(f"{p}:{lineno}: duplicate id {pid!r} (first on line {seen[pid]})")
            seen[pid] = lineno
            answer = obj.pop("answer", None)
            problems.append(Problem(pid, question, None if answer is None else str(answer), obj))
    if not problems:
        raise LedError(f"problem file is empty: {p}")
    return problems


def load_template(path: str | os.PathLike | None) -> str:
    """The user-message template: the reference prompt, or a file with a ``{question}`` slot."""
    if path is None:
        return REFERENCE_PROMPT
    p = Path(path)
    if not p.is_file():
        raise LedError(f"prompt template not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LedError(f"prompt template {p} is not UTF-8 text (byte {e.start})") from None
    if "{question}" not in text:
        raise LedError(f"prompt template {p} has no {{question}} placeholder")
    return text


def render(template: str, problem: Problem) -> str:
    """The user message for ``problem`` (only ``{question}`` is substituted)."""
    return template.replace("{question}", problem.question)
