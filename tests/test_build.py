"""The build protects Intel CPUs with AMX: ggml's AMX buffer type crashes there (SIGSEGV at
``ldtilecfg`` in a CPU worker thread on the first decode), so the x86 build compiles the CPU
backend without AMX while keeping the other extra buffer types (the repack kernels).

These checks do not depend on the machine running them: the compiler is asked what it would
define for an AMX CPU (``-march=sapphirerapids``) under the flags the Makefile hands CMake.
"""

from __future__ import annotations

import ctypes
import platform
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def amx_macros(flags: list[str]) -> list[str]:
    """The __AMX_*__ macros a C compiler defines for a Sapphire Rapids target with ``flags``."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    out = subprocess.run([cc, "-march=sapphirerapids", *flags, "-dM", "-E", "-x", "c", "-"],
                         input="", capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"{cc} does not know -march=sapphirerapids")
    return sorted(line.split()[1] for line in out.stdout.splitlines() if "__AMX_" in line)


def cmake_flags(*make_args: str) -> dict[str, list[str]]:
    """CMAKE_C_FLAGS and CMAKE_CXX_FLAGS of the llama.cpp build, as `make` would pass them."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-s", "--no-print-directory", "build-flags", *make_args],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    flags = {"CMAKE_C_FLAGS": [], "CMAKE_CXX_FLAGS": []}
    for arg in shlex.split(out):  # scikit-build-core splits CMAKE_ARGS the same way
        name, _, value = arg.removeprefix("-D").partition("=")
        if name in flags:
            flags[name] = shlex.split(value)
    return flags


@pytest.mark.skipif(not X86, reason="AMX exists on x86 only")
def test_default_build_compiles_no_amx_for_an_amx_cpu():
    assert amx_macros([]), "control: the compiler should define AMX for sapphirerapids"
    for name, flags in cmake_flags().items():
        assert amx_macros(flags) == [], f"{name} leaves AMX on: {flags}"


@pytest.mark.skipif(not X86, reason="AMX exists on x86 only")
def test_amx_is_an_explicit_opt_in():
    flags = cmake_flags("AMX=1")
    assert flags["CMAKE_C_FLAGS"] == [] and flags["CMAKE_CXX_FLAGS"] == []


def test_installed_cpu_backend_has_no_amx():
    """The library in use: no AMX compiled in (ggml's own report), no AMX tile instruction."""
    import llama_cpp

    libdir = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted(libdir.glob("libggml-cpu.*")) or sorted(libdir.glob("*ggml-cpu*"))
    assert libs, f"no ggml CPU backend library in {libdir}"
    lib = ctypes.CDLL(str(libs[0]))
    lib.ggml_cpu_has_amx_int8.restype = ctypes.c_int
    assert lib.ggml_cpu_has_amx_int8() == 0
    if shutil.which("objdump") and X86:
        asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(libs[0])],
                             capture_output=True, text=True).stdout
        assert "ldtilecfg" not in asm and "tdpbssd" not in asm
