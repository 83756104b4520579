"""Chat templates (Jinja, from GGUF metadata or a file) rendered in a worker process.

A template comes with a downloaded model, so it is treated as hostile: it renders in
Jinja's immutable sandbox inside a separate Python process that is killed when a render runs
past ``TIME_LIMIT_S`` seconds, whose output is cut off past an output-size limit (1 MiB plus
four times the size of the messages), and whose address space is capped at
``MEMORY_LIMIT`` bytes. Any of these is a one-line TemplateError with a hint to supply
another template. The worker starts on first use, is reused by later renders (a killed one
is replaced), ignores Ctrl-C (its parent's business) and exits with its parent.

The rendering matches llama-cpp-python's ``Jinja2ChatFormatter`` (trim_blocks, lstrip_blocks,
loop controls, ``{% generation %}`` ignored, ``tojson`` as Transformers, ``raise_exception``
and ``strftime_now``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from led_local.errors import LedError

TIME_LIMIT_S = 5.0  # per render
STARTUP_LIMIT_S = 60.0  # the worker's start (a Python interpreter and jinja2)
MEMORY_LIMIT = 2 << 30  # the worker's address space, bytes
MIN_OUTPUT = 1 << 20
HINT = "pass `chat_template` FILE with a working template (or `raw` with generate)"


class TemplateError(LedError):
    """A chat template that fails, runs too long or produces too much."""


def load_chat_template(path: str | os.PathLike) -> str:
    """A chat template file's text (UTF-8), for ``--chat-template FILE``."""
    p = Path(path)
    if not p.is_file():
        raise LedError(f"chat template not found: {p}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LedError(f"chat template {p} is not UTF-8 text (byte {e.start})") from None


def render_chat_template(template: str, messages: list[dict[str, str]], *, bos_token: str,
                         eos_token: str, add_generation_prompt: bool = True,
                         variables: dict | None = None, tools: list[dict] | None = None) -> str:
    """``template`` rendered for ``messages`` under the limits above (TemplateError when
    exceeded or when the template raises); ``variables``: more template variables
    (``enable_thinking``, ``reasoning_effort``, ...), which cannot replace the renderer's;
    ``tools``: the OpenAI tool list the template's ``tools`` variable gets (None: none)."""
    return _RENDERER.render({
        "template": template, "messages": messages, "bos_token": bos_token,
        "eos_token": eos_token, "add_generation_prompt": add_generation_prompt,
        "variables": variables or {}, "tools": tools,
    })


class _Renderer:
    """The parent's end: one worker process, JSON lines over its stdin/stdout."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def render(self, request: dict) -> str:
        payload = json.dumps(request, ensure_ascii=False) + "\n"
        request_limit = MIN_OUTPUT + 4 * len(payload)
        line = json.dumps({"limit": request_limit}) + "\n" + payload
        with self._lock:
            proc = self._proc if self._proc is not None else self._start()
            try:
                proc.stdin.write(line.encode())
                proc.stdin.flush()
                reply = self._read_line(proc, TIME_LIMIT_S)
            except (BrokenPipeError, OSError):
                reply = None
            if reply is None:
                self._kill()
                raise TemplateError(
                    f"the chat template did not finish rendering within {TIME_LIMIT_S:g} s "
                    f"(a broken or hostile template); {HINT}")
        answer = json.loads(reply)
        if "text" in answer:
            return answer["text"]
        raise TemplateError(f"the chat template {answer['error']}; {HINT}")

    def _start(self) -> subprocess.Popen:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from led_local.llama.template import worker; worker()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True)
        self._proc = proc
        if self._read_line(proc, STARTUP_LIMIT_S) != b"ready":
            self._kill()
            raise TemplateError(f"the chat template worker did not start within "
                                f"{STARTUP_LIMIT_S:g} s")
        return proc

    @staticmethod
    def _read_line(proc: subprocess.Popen, timeout_s: float) -> bytes | None:
        """One line from the worker, or None on timeout or exit."""
        fd = proc.stdout.fileno()
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                return b"".join(chunks)[:-1]

    def _kill(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._kill()


_RENDERER = _Renderer()
atexit.register(_RENDERER.close)


def worker() -> None:
    """The worker's loop: a ``{"limit"}`` line, then a request line; answers one line."""
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = MEMORY_LIMIT if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    env = _environment()
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    compiled: dict[str, object] = {}
    for line in sys.stdin.buffer:
        limit = json.loads(line)["limit"]
        request = json.loads(sys.stdin.buffer.readline())
        try:
            answer = {"text": _render(env, compiled, request, limit)}
        except MemoryError:
            answer = {"error": f"needed more than {MEMORY_LIMIT >> 20} MiB of memory"}
        except _TooLong:
            answer = {"error": f"produced more than {limit} characters"}
        except RecursionError:
            answer = {"error": "nests too deeply"}
        except Exception as e:  # a template raises on what it does not support
            answer = {"error": f"failed: {' '.join(str(e).split())[:300]}"}
        try:
            reply = json.dumps(answer, ensure_ascii=False)
        except MemoryError:
            reply = json.dumps({"error": "produced too much output"})
        out.write(reply.encode("utf-8", "replace") + b"\n")
        out.flush()


class _TooLong(Exception):
    pass


def _environment():
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class IgnoreGeneration(jinja2.ext.Extension):
        """Hugging Face's ``{% generation %}...{% endgeneration %}``: its body, as is."""

        tags = {"generation"}

        def parse(self, parser):
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True,
                                        lstrip_blocks=True,
                                        extensions=[IgnoreGeneration, jinja2.ext.loopcontrols])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    return env


def _render(env, compiled: dict, request: dict, limit: int) -> str:
    from datetime import datetime

    def raise_exception(message: str):
        raise ValueError(message)

    source = request["template"]
    if source not in compiled:
        compiled.clear()
        compiled[source] = env.from_string(source)
    parts: list[str] = []
    size = 0
    context = dict(request.get("variables", {}))  # the renderer's own names win
    context.update(
        messages=request["messages"], bos_token=request["bos_token"],
        eos_token=request["eos_token"], add_generation_prompt=request["add_generation_prompt"],
        raise_exception=raise_exception, functions=None, function_call=None,
        tools=request.get("tools"), tool_choice=None,
        strftime_now=lambda f: datetime.now().strftime(f))
    for part in compiled[source].generate(context):
        size += len(part)
        if size > limit:
            raise _TooLong
        parts.append(part)
    return "".join(parts)
