"""The build's checks for ``led-local doctor``, and ``Check`` itself.

What the installed llama-cpp-python contains: the versions of led-local, llama-cpp-python,
llama.cpp and ggml; ggml's backend devices and their memory; the instruction sets compiled into
ggml's CPU backend; led-local's layer-input export patch; how batch-invariant runs attend
(flash attention with patch 0003 on the CPU); AMX and the CPU's extra buffer types.
The verdicts are pure functions of what was read, so each can be checked on any machine.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import led_local

AMX_CRASH = ("ggml's AMX matrix kernel crashes (SIGSEGV at ldtilecfg) on the first decode, "
             "llama.cpp issue #20824")


@dataclass(frozen=True)
class Check:
    """One check: ``detail`` says what was found, or why it failed when not ``ok``."""

    name: str
    ok: bool
    detail: str
    value: Any = None


def to_json(checks: list[Check]) -> dict:
    """``{"ok": all passed, "checks": [{name, ok, detail, value}, ...]}``."""
    return {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}


def build_checks(*, capture: str = "auto") -> list[Check]:
    """Versions, backend devices, CPU features, the patch, attention, AMX, extra buffer
    types."""
    try:
        import llama_cpp

        from led_local.llama import native
    except (ImportError, OSError) as e:  # a wheel built elsewhere, a missing shared library
        return [Check("versions", False, f"llama-cpp-python cannot be loaded: {e}")]
    features = native.cpu_features()
    bufts = native.cpu_extra_buffer_types()
    llama_version = getattr(llama_cpp, "llama_version", None)
    return [
        versions_check(llama_cpp.__version__, required_llama_cpp_python(),
                       llama_version().decode() if llama_version else None,
                       native.ggml_version()),
        backend_check(native.backend_devices(), bool(llama_cpp.llama_supports_gpu_offload())),
        Check("cpu-features", True, "compiled into ggml's CPU backend: "
              + (" ".join(k for k, v in features.items() if v) or "none"), features),
        patch_check(native.layer_inp_patch_version(), native.LAYER_INP_PATCH_VERSION,
                    capture=capture),
        attention_check(native.fa_invariant_patch_version(),
                        bool(llama_cpp.llama_supports_gpu_offload())),
        amx_check(features.get("amx_int8", False), bufts, host_has_amx()),
        Check("extra-buffer-types", True, f"{', '.join(bufts) or 'none'}; models load "
              + ("with" if llama_cpp.llama_model_default_params().use_extra_bufts else "without")
              + " them", bufts),
    ]


def required_llama_cpp_python() -> str | None:
    """The llama-cpp-python version led-local's installed metadata pins, if any."""
    try:
        requires = importlib.metadata.requires("led-local") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return None
    for req in requires:
        m = re.fullmatch(r"llama[-_]cpp[-_]python\s*==\s*([\w.]+)", req.strip())
        if m:
            return m.group(1)
    return None


def versions_check(have: str, required: str | None, llama: str | None,
                   ggml: str | None) -> Check:
    """llama.cpp's library reports its version, not its build number or commit (those live
    in llama.cpp's tools); ``ggml_commit`` names whatever git checkout the build ran in."""
    value = {"led-local": led_local.__version__, "llama-cpp-python": have, "llama.cpp": llama,
             "ggml": ggml}
    if required and have != required:
        return Check("versions", False, f"llama-cpp-python {have} but led-local requires "
                     f"{required} (it mirrors that version's ggml structures): make install",
                     value)
    return Check("versions", True, f"led-local {led_local.__version__}, llama-cpp-python "
                 f"{have}, llama.cpp {llama or 'unknown'} (ggml {ggml or 'unknown'})", value)


def backend_check(devices: list[dict], gpu_offload: bool) -> Check:
    """ggml's devices with their type and memory; no device at all is a failure."""
    if not devices:
        return Check("backend", False, "ggml reports no backend device", devices)
    gpus = sorted({d["backend"] for d in devices if d["type"] != "CPU"})
    listed = "; ".join(
        f"{d['name']} ({d['type']}, {d['description']}, {d['memory_free'] / 2**30:.1f} GiB free"
        f" of {d['memory_total'] / 2**30:.1f} GiB)" for d in devices)
    return Check("backend", True, f"{'+'.join(gpus) or 'CPU'} build, GPU offload "
                 f"{'yes' if gpu_offload else 'no'}: {listed}", devices)


def patch_check(version: int | None, expected: int, *, capture: str = "auto") -> Check:
    """led-local's layer-input export patch: its absence fails only ``--capture layer-inp``."""
    if version == expected:
        return Check("patch", True, f"layer-input export patch version {version}: "
                     "--capture layer-inp available", version)
    if version is not None:
        return Check("patch", False, f"layer-input export patch version {version}, this "
                     f"led-local expects {expected}: rebuild with make install", version)
    if capture == "layer-inp":
        return Check("patch", False, "--capture layer-inp needs led-local's patched llama.cpp "
                     "and this one is stock: run make install", None)
    return Check("patch", True, "absent (stock llama.cpp): hidden states go through the eval "
                 "callback; make install builds the patched llama.cpp", None)


def attention_check(version: int | None, gpu: bool) -> Check:
    """How batch-invariant runs (generate, solve, serve) attend: with flash attention where the
    build's CPU kernel is batch-invariant (patches/0003) and the model runs on the CPU."""
    if version is not None and not gpu:
        return Check("attention", True, f"flash attention, batch-invariant (patch 0003 version "
                     f"{version})", "flash")
    if gpu:
        return Check("attention", True, "without flash attention in batch-invariant runs: the "
                     "GPU backend's flash-attention kernels are not batch-invariant", "plain")
    return Check("attention", True, "without flash attention in batch-invariant runs (stock "
                 "llama.cpp; make install builds the batch-invariant kernel)", "plain")


def amx_check(compiled: bool, bufts: list[str], host: bool | None) -> Check:
    """AMX must not be active: an AMX buffer type among the CPU's extra buffer types fails."""
    value = {"compiled": compiled, "active": "AMX" in bufts, "cpu_has_amx": host}
    cpu = {True: "this CPU has AMX", False: "this CPU has no AMX", None: "CPU flags unknown"}
    if "AMX" in bufts:
        return Check("amx", False, f"ggml's AMX buffer type is active and {AMX_CRASH}: "
                     "rebuild without AMX=1 (make install)", value)
    if compiled:
        return Check("amx", True, f"compiled in (AMX=1) but inactive: {cpu[host]}", value)
    return Check("amx", True, f"not compiled in ({cpu[host]}; the default build leaves AMX "
                 "out because ggml's AMX kernel crashes)", value)


def host_has_amx() -> bool | None:
    """Whether the CPU reports AMX (Linux /proc/cpuinfo flags); None where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), None)
    return None if flags is None else "amx_int8" in flags.split()
