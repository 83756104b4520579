"""Commands never end in a traceback for what a user types, and Ctrl-C does what it says
(issue 21, cases 8, 13 and 26)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from led_local.cli import main; main()"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str | bytes, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(os.fsencode, args)], input=stdin, capture_output=True,
                          env=ENV, timeout=300)


# -- case 8: arguments and chat lines that are not UTF-8 -----------------------------------------
@pytest.mark.parametrize("args", [
    ["generate", "{m}", "--prompt", b"Hi\xff"],
    ["generate", "{m}", "--raw", "--prompt", b"Hi\xff"],
    ["generate", "{m}", "--prompt", "Hi", "--system", b"\xfe sys"],
    ["inspect", "{m}", "--prompt", b"Hi\xff"],
    ["inspect", "{m}", "--prompt", "Hi", "--response", b"\xffok"],
])
def test_case8_an_argument_that_is_not_utf8_is_one_line_exit_2(smollm2, args):
    p = cli(*[str(smollm2) if a == "{m}" else a for a in args], "-n", "2")
    err = p.stderr.decode()
    assert p.returncode == 2 and "is not valid UTF-8 text (byte 0x" in err, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_case8_a_chat_line_that_is_not_utf8_keeps_the_session(smollm2):
    p = cli("chat", str(smollm2), "-n", "3", "-s", "1", "-m", "greedy",
            stdin=b"\xff\xfe\nSay hi.\n/exit\n")
    err = p.stderr.decode()
    assert p.returncode == 0 and "Traceback" not in err, err
    assert "not valid UTF-8" in err and p.stdout.strip()  # the next line was answered


# -- case 26: Ctrl-C at the prompt clears the line; only Ctrl-D or /exit leaves -----------------
def test_case26_ctrl_c_at_the_prompt_keeps_the_session(smollm2):
    proc = subprocess.Popen([*CLI, "chat", str(smollm2), "-n", "2", "-m", "greedy"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    try:
        seen = b""
        while b"> " not in seen:
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, seen
            seen += chunk
        for _ in range(2):
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert proc.poll() is None
        out, err = proc.communicate(b"Say hi.\n/exit\n", timeout=120)
        assert proc.returncode == 0 and out.strip(), err
    finally:
        if proc.poll() is None:
            proc.kill()


# -- case 13: Ctrl-C while the model loads exits 130 at once ------------------------------------
def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_after(marker: bytes, args: list[str], delay: float = 0.0):
    """Run the CLI with ``args``, send it SIGINT ``delay`` s after ``marker`` shows on its
    stderr, and return (exit code, stdout, stderr)."""
    # Ctrl-C reaches a command run from a terminal; a test run started in the background
    # (`make test &`, nohup) passes SIGINT on ignored, and the model load keeps it so
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=ENV, preexec_fn=_sigint_default)
    try:
        seen = b""
        while marker not in seen:
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, seen[-2000:]
            seen += chunk
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, seen + err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_case13_ctrl_c_while_the_model_loads_exits_130(gemma3):
    # sent once the load has begun; on a busy machine it can land once the load is over,
    # during the response (the test below): exit 130 either way, never a traceback
    code, out, err = _interrupt_after(b"llama_model_loader: - kv", [
        "generate", str(gemma3), "--raw", "-p", "Count to 100.", "-n", "400", "-v"])
    assert code == 130, (err[-2000:], out[-200:])
    assert b"Traceback" not in err
    if b"interrupted while loading the model" in err:
        assert not out.strip()
    else:
        assert b" tokens (interrupted)" in err


def test_ctrl_c_during_generate_prints_the_text_so_far_and_exits_130(gemma3):
    code, out, err = _interrupt_after(b"sched_reserve: reserve took", [  # the context is made
        "generate", str(gemma3), "--raw", "-p", "Count to 100.", "-n", "2000", "-v"], 1.5)
    assert code == 130, (err[-2000:], out[-200:])
    assert b"Traceback" not in err and out.strip()
    summary = err.strip().splitlines()[-1].decode()
    assert " tokens (interrupted)" in summary and int(summary.split()[1]) < 2000


# -- case 24: a long pasted line arrives whole in chat (readline, not the tty's 4,095 bytes) -----
def test_case24_a_long_pasted_line_arrives_whole(smollm2):
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, "chat", str(smollm2), "-n", "2", "-m", "greedy"],
                            stdin=slave, stdout=slave, stderr=slave, env=ENV,
                            start_new_session=True)
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, timeout: float) -> bool:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        return marker in seen

    try:
        assert read_until(b"> ", 120), seen
        time.sleep(0.5)  # the prompt is printed just before the line is read
        line = b" " * 5000 + b"/reset\r"  # only a whole line ends in /reset
        for i in range(0, len(line), 512):
            os.write(master, line[i:i + 512])
            read_until(b"\x00", 0.05)  # keep draining the echo
        assert read_until(b"(conversation reset)", 20), seen[-500:]
        os.write(master, b"/exit\r")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
