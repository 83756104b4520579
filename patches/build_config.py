"""Write the CMake arguments of led-local's llama.cpp build into the patched llama-cpp-python
tree, so that every pip install of that tree gets them: the Makefile's, and one run by hand
(``pip install build/llama_cpp_python-VERSION``).

    python patches/build_config.py SRC "CMAKE_ARGS"

The Makefile decides the arguments (``make -s build-flags`` prints them: the backend and the
AMX protection) and calls this right after applying the patches. They go into SRC's
pyproject.toml as scikit-build-core's ``cmake.args`` (split as scikit-build-core splits the
``CMAKE_ARGS`` variable), with a ``build-dir`` inside SRC, so the CMake cache of the build stays
where a test can read what the compiler was given.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

HEADER = "[tool.scikit-build]\n"
BUILD_DIR = "build/{wheel_tag}"


def configure(src: Path, cmake_args: str) -> None:
    path = src / "pyproject.toml"
    text = path.read_text(encoding="utf-8")
    if text.count(HEADER) != 1 or "\ncmake.args" in text or "\nbuild-dir" in text:
        raise SystemExit(f"{path}: expected one {HEADER.strip()} table without cmake.args or "
                         "build-dir (a pristine llama-cpp-python tree)")
    args = ", ".join(json.dumps(a) for a in shlex.split(cmake_args))
    lines = f"cmake.args = [{args}]\nbuild-dir = {json.dumps(BUILD_DIR)}\n"
    path.write_text(text.replace(HEADER, HEADER + lines, 1), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    configure(Path(sys.argv[1]), sys.argv[2])
