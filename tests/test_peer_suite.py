"""llama.cpp's own server tests, run unchanged against ``led-local serve``.

The OpenAI-facing files of llama-server's test suite (shipped in the llama.cpp sources that
``make install`` builds) start ``led-local serve`` on the bundled model instead of
llama-server (tests/peer/llama_server.py translates the options, tests/peer/plugin.py points
the presets at the local model). Their assertions are not touched. Every test that fails is
listed, with the reason, in tests/peer/expected.md: an expectation of their tiny test model's
exact text or token counts (``model``), or llama-server's own surface that the OpenAI API
does not have (``llama-server``). This test fails on a failure the table does not list, and on
a listed test that now passes (the table must be brought up to date), so a real
incompatibility can neither appear nor hide.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import ROOT

PEER = ROOT / "build" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / "tools" / "server" \
    / "tests"
HERE = Path(__file__).resolve().parent / "peer"
TABLE = HERE / "expected.md"
# whole files, and of test_completion.py the tests that go through the OpenAI API
FILES = ("unit/test_basic.py", "unit/test_security.py", "unit/test_chat_completion.py",
         "unit/test_tool_call.py")
OPENAI_ONLY = ("unit/test_completion.py",)
CLASSES = {"model", "llama-server"}

pytestmark = pytest.mark.slow


def _openai_tests(path: Path) -> list[str]:
    """The test functions of ``path`` whose source calls the OpenAI API (a /v1 path or the
    openai client)."""
    source = path.read_text(encoding="utf-8")
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            body = ast.get_source_segment(source, node) or ""
            if "/v1/" in body or "OpenAI(" in body:
                names.append(node.name)
    return names


def expected() -> dict[str, tuple[str, str]]:
    """The table's rows: test id -> (class, reason)."""
    rows = {}
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*([\w-]+)\s*\|(.*)\|\s*$", line)
        if m:  # (a | inside a test id is escaped, as Markdown tables need)
            rows[m.group(1).replace("\\|", "|")] = (m.group(2), m.group(3).strip())
    return rows


def run_suite(tmp: Path, model: Path) -> dict[str, str]:
    """Run the selection; test id -> 'passed', 'failed' or 'skipped'."""
    select = [*FILES]
    for f in OPENAI_ONLY:
        select += [f"{f}::{name}" for name in _openai_tests(PEER / f)]
    xml = tmp / "peer.xml"
    launcher = tmp / "llama-server"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "llama_server.py"}" "$@"\n')
    launcher.chmod(0o755)
    env = {**os.environ, "LLAMA_SERVER_BIN_PATH": str(launcher),
           "LED_PEER_MODEL": str(model), "PYTHONPATH": os.pathsep.join(
               [str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "LLAMA_CACHE": str(tmp / "cache"), "PORT": str(_free_port())}
    env.pop("SLOW_TESTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "plugin", "-p", "no:cacheprovider", "-q",
         "-m", "not slow", f"--junitxml={xml}", "-o", "junit_family=xunit1", *select],
        cwd=PEER, env=env, capture_output=True, text=True, timeout=1800)
    if not xml.exists():
        pytest.fail(f"the peer suite did not run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    outcome = {}
    for case in ET.parse(xml).iter("testcase"):
        test_id = f"{case.get('file')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome[test_id] = "failed"
        elif case.find("skipped") is not None:
            outcome[test_id] = "skipped"
        else:
            outcome[test_id] = "passed"
    return outcome


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_table_classifies_every_row():
    rows = expected()
    assert rows, f"{TABLE} has no rows"
    wrong = {t: c for t, (c, _) in rows.items() if c not in CLASSES}
    assert not wrong, f"rows must be one of {sorted(CLASSES)} (no real incompatibility): {wrong}"
    assert all(why for _, why in rows.values()), "every row says why"


def test_llama_server_suite_passes_except_the_listed(tmp_path, smollm2):
    if not PEER.is_dir():
        pytest.fail(f"{PEER} is missing: run `make install`")
    outcome = run_suite(tmp_path, smollm2)
    ran = [t for t, o in outcome.items() if o != "skipped"]
    assert len(ran) > 50, f"only {len(ran)} peer tests ran"
    rows = expected()
    failed = {t for t, o in outcome.items() if o == "failed"}
    new = sorted(failed - rows.keys())
    fixed = sorted(t for t in rows.keys() & outcome.keys() if outcome[t] == "passed")
    gone = sorted(rows.keys() - outcome.keys())
    assert not new, "peer tests failing that tests/peer/expected.md does not list:\n" + \
        "\n".join(new)
    assert not fixed, "listed in tests/peer/expected.md but passing now:\n" + "\n".join(fixed)
    assert not gone, "listed in tests/peer/expected.md but not run:\n" + "\n".join(gone)
