"""The package builds (sdist and wheel) in a fresh virtual environment from only the build
requirements pyproject.toml declares, and the version is written in one place."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import led_local

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_is_written_once():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.M)
    assert 'version = {attr = "led_local.__version__"}' in pyproject
    assert not re.search(r'^version = "', pyproject, re.M)
    assert re.fullmatch(r"\d+\.\d+\.\d+", led_local.__version__)


def test_the_build_requires_the_setuptools_that_reads_an_spdx_license():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in pyproject and (ROOT / "LICENSE").is_file()
    assert 'requires = ["setuptools>=77"]' in pyproject  # PEP 639 strings: setuptools 77


@pytest.mark.slow
def test_sdist_and_wheel_build_in_a_fresh_venv(tmp_path):
    """Needs PyPI (pip fetches `build` and the declared build requirements)."""
    tree = tmp_path / "tree"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    pip = subprocess.run([python, "-m", "pip", "install", "-q", "build"], capture_output=True,
                         text=True)
    if pip.returncode != 0:
        pytest.skip(f"cannot install `build` from the package index: {pip.stderr[-300:]}")
    out = subprocess.run([python, "-m", "build", "-o", tmp_path / "dist", tree],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    version = led_local.__version__
    built = sorted(p.name for p in (tmp_path / "dist").iterdir())
    assert built == [f"led_local-{version}-py3-none-any.whl", f"led_local-{version}.tar.gz"]
    wheel = subprocess.run([python, "-m", "zipfile", "-l", tmp_path / "dist" / built[0]],
                           capture_output=True, text=True, check=True).stdout
    assert f"led_local-{version}.dist-info/licenses/LICENSE" in wheel
    for name in ("index.html", "chat.js", "chat.css"):  # the chat page of `serve`
        assert f"led_local/serve/page/{name}" in wheel
