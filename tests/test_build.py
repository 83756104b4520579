"""The build protects Intel CPUs with AMX: ggml's AMX buffer type crashes there (SIGSEGV at
``ldtilecfg`` in a CPU worker thread on the first decode), so the x86 build compiles the CPU
backend without AMX while keeping the other extra buffer types (the repack kernels).

These checks do not depend on the machine running them: the compiler is asked what it would
define for an AMX CPU (``-march=sapphirerapids``) under the flags the Makefile hands CMake.
"""

from __future__ import annotations

import ctypes
import os
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


def test_pip_gets_the_makefiles_flags_from_the_patched_tree(tmp_path):
    """One place decides the CMake arguments: the Makefile writes them into the patched tree's
    pyproject.toml (patches/build_config.py), which any pip install of that tree reads; the
    CMake cache of the build that made the library in use holds them."""
    import tomllib

    src = ROOT / "build" / "llama_cpp_python-0.3.36"
    if not (src / "pyproject.toml").is_file():
        pytest.skip("the patched tree is not built (make install)")
    conf = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["scikit-build"]
    wanted = shlex.split(subprocess.run(["make", "-s", "--no-print-directory", "build-flags"],
                                        cwd=ROOT, capture_output=True, text=True,
                                        check=True).stdout)
    assert conf["cmake"]["args"] == wanted
    caches = sorted((src / "build").glob("*/CMakeCache.txt"))
    assert caches, f"no CMake cache under {src / 'build'}: the tree was built without its args"
    cache = caches[0].read_text()
    for arg in wanted:
        name, _, value = arg.removeprefix("-D").partition("=")
        if name in ("CMAKE_C_FLAGS", "CMAKE_CXX_FLAGS"):
            assert f"{name}:STRING={value}\n" in cache, name
    # the script refuses a tree it configured already (or another layout)
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_config", ROOT / "patches" /
                                                  "build_config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "pyproject.toml").write_text((src / "pyproject.toml").read_text())
    with pytest.raises(SystemExit):
        mod.configure(tmp_path, "-DX=1")


def macos_like_path(tmp_path: Path, *, uname: tuple[str, str] | None = None) -> str:
    """A PATH holding every tool of this one except GNU ``sha256sum`` and ``nproc`` (stock
    macOS lacks both), with stand-ins for macOS's ``shasum`` and ``sysctl`` (and ``uname``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = bin_dir / name
            if name in ("sha256sum", "nproc") or target.exists():
                continue
            target.symlink_to(Path(directory) / name)
    stubs = {"shasum": 'echo "shasum $*"', "sysctl": 'test "$*" = "-n hw.ncpu" && echo 7'}
    if uname is not None:
        stubs["uname"] = f'case "$1" in -s) echo {uname[0]};; -m) echo {uname[1]};; esac'
    for name, body in stubs.items():
        (bin_dir / name).unlink(missing_ok=True)
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def make_dry_run(path: str, *args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {**os.environ, "PATH": path}
    env.pop("BACKEND", None)
    return subprocess.run(["make", "-n", "-B", "--no-print-directory", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True).stdout


def test_make_install_falls_back_to_shasum_and_sysctl_without_gnu_tools(tmp_path):
    path = macos_like_path(tmp_path)
    assert shutil.which("sha256sum", path=path) is None and shutil.which("nproc", path=path) is None
    out = make_dry_run(path, "install")
    assert "sha256sum" not in out
    assert "| shasum -a 256 -c --quiet" in out  # the sdist's checksum
    assert "CMAKE_BUILD_PARALLEL_LEVEL=7" in out
    models = make_dry_run(path, "models")
    assert models.count("| shasum -a 256 -c --quiet") == 2  # both model files


def test_make_uses_gnu_tools_where_they_exist():
    if shutil.which("sha256sum") is None or shutil.which("nproc") is None:
        pytest.skip("GNU coreutils are not installed")
    out = make_dry_run(os.environ["PATH"], "install")
    assert "| sha256sum -c --quiet" in out
    cores = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    assert f"CMAKE_BUILD_PARALLEL_LEVEL={cores} " in out


@pytest.mark.parametrize("system, machine, metal", [("Darwin", "arm64", True),
                                                    ("Darwin", "x86_64", False),
                                                    ("Linux", "aarch64", False)])
def test_apple_silicon_builds_metal_by_default(tmp_path, system, machine, metal):
    out = make_dry_run(macos_like_path(tmp_path, uname=(system, machine)), "install")
    assert ("-DGGML_METAL=on" in out) == metal
    assert ("-mno-amx" in out) == (machine == "x86_64")
