"""Bindings to what llama-cpp-python does not expose publicly, isolated in one module.

- ggml (ggml.h, ggml-backend.h): the ``ggml_tensor`` layout, to read a tensor's name and shape
  inside the eval callback, and ``ggml_backend_tensor_get``, which copies a tensor out of
  whatever backend memory holds it (CPU, CUDA or Metal alike).
- llama-ext.h (non-public, C++-mangled symbols): ``llama_set_embeddings_layer_inp`` and
  ``llama_get_embeddings_layer_inp``, llama.cpp's own export of block inputs.
- patches/0001-layer-inp-export.patch: ``llama_led_layer_inp_patch_version``, present only in
  the patched build that ``make install`` produces. Unpatched, the layer-input export aborts
  the process on architectures whose graph does not register its block inputs (qwen2,
  gemma3), so led-local only uses it when this symbol is there.
- what the build contains, for ``led-local doctor``: ggml's version, its backend devices and
  their memory, the CPU backend's compiled instruction sets (``ggml_cpu_has_*``) and its extra
  buffer types (through ``ggml_backend_reg_get_proc_address``).
- patches/0002-led-depth-logits.patch: ``llama_led_set_projection`` and its getters (C names),
  LED's depth logits computed inside llama.cpp's graph; absent from older builds.
- patches/0003-fa-batch-invariant.patch: ``ggml_cpu_led_fa_invariant_version`` (ggml-cpu, C
  name), present where the CPU flash attention is batch-invariant.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from typing import Any

import llama_cpp
from llama_cpp import _ggml

GGML_MAX_DIMS = 4
GGML_MAX_OP_PARAMS = 64
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_Q4_0 = 2
GGML_TYPE_Q5_0 = 6
GGML_TYPE_Q8_0 = 8
GGML_TYPE_Q8_1 = 9
GGML_TYPE_Q8_K = 15
GGML_TYPE_IQ4_NL = 20
GGML_TYPE_BF16 = 30


class GGMLTensor(ctypes.Structure):
    """Mirror of ``struct ggml_tensor`` (ggml.h); only read, never written."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


TENSOR_NAME_OFFSET: int = GGMLTensor.name.offset

# typedef bool (*ggml_backend_sched_eval_callback)(struct ggml_tensor * t, bool ask,
#                                                  void * user_data);
EvalCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)


def _symbol(lib: ctypes.CDLL, names: Iterable[str]) -> Any | None:
    for name in names:
        try:
            return getattr(lib, name)
        except AttributeError:
            continue
    return None


# void ggml_backend_tensor_get(const struct ggml_tensor * tensor, void * data, size_t offset,
#                              size_t size);
_tensor_get = _symbol(_ggml.libggml, ["ggml_backend_tensor_get"])
if _tensor_get is None:  # pragma: no cover - every llama-cpp-python build exports it
    raise ImportError("this llama-cpp-python build does not export ggml_backend_tensor_get")
_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
_tensor_get.restype = None


def tensor_get(tensor: int, dst: int, offset: int, size: int) -> None:
    """Copy ``size`` bytes at ``offset`` of a ggml tensor (any backend) to host address ``dst``."""
    _tensor_get(tensor, dst, offset, size)


class InitParams(ctypes.Structure):
    """Mirror of ``struct ggml_init_params`` (ggml.h)."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]


def _bind(name: str, argtypes: list, restype: Any) -> Any:
    fn = _symbol(_ggml.libggml, [name])
    if fn is None:  # pragma: no cover - part of every ggml build
        raise ImportError(f"this llama-cpp-python build does not export {name}")
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


_vp = ctypes.c_void_p
# struct ggml_context * ggml_init(struct ggml_init_params params);  void ggml_free(ctx);
ggml_init = _bind("ggml_init", [InitParams], _vp)
ggml_free = _bind("ggml_free", [_vp], None)
# size_t ggml_tensor_overhead(void);  size_t ggml_graph_overhead(void);
ggml_tensor_overhead = _bind("ggml_tensor_overhead", [], ctypes.c_size_t)
ggml_graph_overhead = _bind("ggml_graph_overhead", [], ctypes.c_size_t)
# struct ggml_tensor * ggml_new_tensor_2d(ctx, enum ggml_type type, int64_t ne0, int64_t ne1);
ggml_new_tensor_2d = _bind("ggml_new_tensor_2d", [_vp, ctypes.c_int, ctypes.c_int64,
                                                  ctypes.c_int64], _vp)
# struct ggml_tensor * ggml_mul_mat(ctx, struct ggml_tensor * a, struct ggml_tensor * b);
ggml_mul_mat = _bind("ggml_mul_mat", [_vp, _vp, _vp], _vp)
# struct ggml_cgraph * ggml_new_graph(ctx);  void ggml_build_forward_expand(graph, tensor);
ggml_new_graph = _bind("ggml_new_graph", [_vp], _vp)
ggml_build_forward_expand = _bind("ggml_build_forward_expand", [_vp, _vp], None)


class CPlan(ctypes.Structure):
    """Mirror of ``struct ggml_cplan`` (ggml-cpu.h): the caller allocates ``work_data``."""

    _fields_ = [("work_size", ctypes.c_size_t), ("work_data", _vp), ("n_threads", ctypes.c_int),
                ("threadpool", _vp), ("abort_callback", _vp), ("abort_callback_data", _vp),
                ("use_ref", ctypes.c_bool)]


# (ggml-cpu.h; the CPU backend is part of every build, GPU ones included)
# struct ggml_cplan ggml_graph_plan(const struct ggml_cgraph * cgraph, int n_threads,
#                                   struct ggml_threadpool * threadpool);
ggml_graph_plan = _bind("ggml_graph_plan", [_vp, ctypes.c_int, _vp], CPlan)
# enum ggml_status ggml_graph_compute(struct ggml_cgraph * cgraph, struct ggml_cplan * cplan);
ggml_graph_compute = _bind("ggml_graph_compute", [_vp, ctypes.POINTER(CPlan)], ctypes.c_int)
# enum ggml_status ggml_graph_compute_with_ctx(ctx, struct ggml_cgraph * cgraph, int n_threads);
# (the work buffer taken from ctx, which must have room for it)
ggml_graph_compute_with_ctx = _bind("ggml_graph_compute_with_ctx", [_vp, _vp, ctypes.c_int],
                                    ctypes.c_int)


class TypeTraitsCPU(ctypes.Structure):
    """Mirror of ``struct ggml_type_traits_cpu`` (ggml-cpu.h)."""

    _fields_ = [("from_float", _vp), ("vec_dot", _vp), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


# const struct ggml_type_traits_cpu * ggml_get_type_traits_cpu(enum ggml_type type);
_traits_cpu = _bind("ggml_get_type_traits_cpu", [ctypes.c_int], ctypes.POINTER(TypeTraitsCPU))
# typedef void (*ggml_from_float_t)(const float * x, void * y, int64_t k);
FromFloat = ctypes.CFUNCTYPE(None, _vp, _vp, ctypes.c_int64)


def cpu_vec_dot_type(ggml_type: int) -> int:
    """The type ggml's CPU product converts float32 activations to before multiplying them
    by a matrix of ``ggml_type`` (its ``vec_dot_type``: F32, F16, BF16, Q8_0, Q8_1 or Q8_K)."""
    return int(_traits_cpu(ggml_type).contents.vec_dot_type)


def cpu_from_float(ggml_type: int) -> Callable[[int, int, int], None] | None:
    """ggml's CPU conversion of k float32 values (a multiple of the block size) at one address
    into ``ggml_type`` blocks at another, as its product converts activations; None where the
    type has none (F32)."""
    ptr = _traits_cpu(ggml_type).contents.from_float
    return FromFloat(ptr) if ptr else None


# void llama_set_embeddings_layer_inp(struct llama_context * ctx, uint32_t lid, bool value);
_set_layer_inp = _symbol(
    llama_cpp.llama_cpp._lib,
    ["llama_set_embeddings_layer_inp", "_Z30llama_set_embeddings_layer_inpP13llama_contextjb"],
)
# float * llama_get_embeddings_layer_inp(struct llama_context * ctx, uint32_t lid);
_get_layer_inp = _symbol(
    llama_cpp.llama_cpp._lib,
    ["llama_get_embeddings_layer_inp", "_Z30llama_get_embeddings_layer_inpP13llama_contextj"],
)
# int32_t llama_led_layer_inp_patch_version(void);   (patches/0001-layer-inp-export.patch)
_patch_version = _symbol(
    llama_cpp.llama_cpp._lib,
    ["llama_led_layer_inp_patch_version", "_Z33llama_led_layer_inp_patch_versionv"],
)
if _set_layer_inp is not None:
    _set_layer_inp.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_bool]
    _set_layer_inp.restype = None
if _get_layer_inp is not None:
    _get_layer_inp.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    _get_layer_inp.restype = ctypes.POINTER(ctypes.c_float)
if _patch_version is not None:
    _patch_version.argtypes = []
    _patch_version.restype = ctypes.c_int32


def layer_inp_patch_version() -> int | None:
    """The led-local patch's version in the loaded llama.cpp, or None for a stock build."""
    if _patch_version is None or _set_layer_inp is None or _get_layer_inp is None:
        return None
    return int(_patch_version())


def set_layer_inp(ctx: int, lid: int, enable: bool) -> None:
    """Ask the context to export the input of block ``lid`` for every batch token."""
    if _set_layer_inp is None:
        raise RuntimeError("llama_set_embeddings_layer_inp is missing from this llama.cpp build")
    _set_layer_inp(ctx, lid, enable)


def get_layer_inp(ctx: int, lid: int) -> Any:
    """Pointer to the exported input of block ``lid``: float[n_batch_tokens * n_embd]."""
    if _get_layer_inp is None:
        raise RuntimeError("llama_get_embeddings_layer_inp is missing from this llama.cpp build")
    return _get_layer_inp(ctx, lid)


# patches/0002-led-depth-logits.patch (extern "C"): LED's depth logits inside the graph
_led_version = _symbol(llama_cpp.llama_cpp._lib, ["llama_led_projection_patch_version"])
_led_set = _symbol(llama_cpp.llama_cpp._lib, ["llama_led_set_projection"])
_led_values = _symbol(llama_cpp.llama_cpp._lib, ["llama_led_get_values_ith"])
_led_candidates = _symbol(llama_cpp.llama_cpp._lib, ["llama_led_get_candidates_ith"])
if _led_version is not None:
    _led_version.argtypes = []
    _led_version.restype = ctypes.c_int32
PROJECTION_PATCH_VERSION = 2  # what patches/0002-led-depth-logits.patch exports now
if _led_version is not None and _led_version() != PROJECTION_PATCH_VERSION:
    # an older build of the patch: its setter takes other arguments, so none of it is used
    _led_set = None
if _led_set is not None:
    # void llama_led_set_projection(ctx, const int32_t * layers, int32_t n_layers, bool norm,
    #                               float scale, int32_t top_k, int32_t round_type);
    _led_set.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32,
                         ctypes.c_bool, ctypes.c_float, ctypes.c_int32, ctypes.c_int32]
    _led_set.restype = None
if _led_values is not None:
    # const float * llama_led_get_values_ith(ctx, int32_t i);
    _led_values.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    _led_values.restype = ctypes.POINTER(ctypes.c_float)
if _led_candidates is not None:
    # const int32_t * llama_led_get_candidates_ith(ctx, int32_t i);
    _led_candidates.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    _led_candidates.restype = ctypes.POINTER(ctypes.c_int32)


def projection_patch_version() -> int | None:
    """The in-graph projection patch's version in the loaded llama.cpp, or None without it (or
    with an older version of it, which ``make install`` replaces)."""
    if None in (_led_version, _led_set, _led_values, _led_candidates):
        return None
    return int(_led_version())


def led_set_projection(ctx: int, layers: list[int], *, norm: bool, scale: float,
                       top_k: int, round_type: int | None) -> None:
    """Project the inputs of ``layers`` of every output row in the next decodes (``[]``: off);
    top_k 0 keeps the full logits, K the values at the final layer's top K tokens;
    round_type (GGML_TYPE_Q8_0, F16 or BF16; None: none): the activation type of the head's
    product, whose rounding the graph then undoes (``activations``)."""
    if _led_set is None:
        raise RuntimeError("llama_led_set_projection is missing from this llama.cpp build")
    ids = (ctypes.c_int32 * max(1, len(layers)))(*layers)
    _led_set(ctx, ids, len(layers), norm, scale, top_k, -1 if round_type is None else round_type)


def led_values(ctx: int, i: int) -> Any:
    """Pointer to batch token i's projection values after a decode (NULL: none)."""
    if _led_values is None:
        raise RuntimeError("llama_led_get_values_ith is missing from this llama.cpp build")
    return _led_values(ctx, i)


def led_candidates(ctx: int, i: int) -> Any:
    """Pointer to batch token i's candidate token ids after a decode (NULL: none)."""
    if _led_candidates is None:
        raise RuntimeError("llama_led_get_candidates_ith is missing from this llama.cpp build")
    return _led_candidates(ctx, i)


_log_callback_ref: list[Any] = []  # ctypes callbacks must outlive every call llama.cpp makes


def set_llama_logging(sink: Callable[[str], None] | None) -> None:
    """Route llama.cpp's and ggml's log lines to ``sink``, or drop them when it is None."""

    def _log(_level: int, text: bytes | None, _user: int | None) -> None:
        if sink is not None and text:
            sink(text.decode("utf-8", "replace"))

    cb = llama_cpp.llama_log_callback(_log)
    _log_callback_ref[:] = [cb]
    llama_cpp.llama_log_set(cb, None)


# -- what the build contains: versions, backend devices, CPU features, extra buffer types ----
# (ggml.h, ggml-backend.h, ggml-cpu.h; read by ``led-local doctor``)

LAYER_INP_PATCH_VERSION = 1  # what patches/0001-layer-inp-export.patch exports
DEVICE_TYPES = ("CPU", "GPU", "IGPU", "ACCEL", "META")  # enum ggml_backend_dev_type
# ggml_cpu_has_<name>: instruction sets the CPU backend was compiled with (ggml-cpu.h)
CPU_FEATURES = (
    "sse3", "ssse3", "avx", "avx_vnni", "avx2", "bmi2", "f16c", "fma", "avx512", "avx512_vbmi",
    "avx512_vnni", "avx512_bf16", "amx_int8", "neon", "arm_fma", "fp16_va", "dotprod",
    "matmul_int8", "sve", "sme", "riscv_v", "vsx", "vxe", "wasm_simd", "llamafile",
)


def _optional(name: str, argtypes: list, restype: Any) -> Any | None:
    fn = _symbol(_ggml.libggml, [name])
    if fn is not None:
        fn.argtypes = argtypes
        fn.restype = restype
    return fn


_str = ctypes.c_char_p
_ggml_version = _optional("ggml_version", [], _str)
_dev_count = _bind("ggml_backend_dev_count", [], ctypes.c_size_t)
_dev_get = _bind("ggml_backend_dev_get", [ctypes.c_size_t], _vp)
_dev_name = _bind("ggml_backend_dev_name", [_vp], _str)
_dev_description = _bind("ggml_backend_dev_description", [_vp], _str)
_dev_type = _bind("ggml_backend_dev_type", [_vp], ctypes.c_int)
_dev_memory = _bind("ggml_backend_dev_memory", [_vp, ctypes.POINTER(ctypes.c_size_t),
                                                ctypes.POINTER(ctypes.c_size_t)], None)
_dev_reg = _bind("ggml_backend_dev_backend_reg", [_vp], _vp)
_reg_name = _bind("ggml_backend_reg_name", [_vp], _str)
_reg_proc = _bind("ggml_backend_reg_get_proc_address", [_vp, _str], _vp)
_buft_name = _bind("ggml_backend_buft_name", [_vp], _str)
# typedef ggml_backend_buffer_type_t * (*ggml_backend_dev_get_extra_bufts_t)(ggml_backend_dev_t)
_GetExtraBufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)


# patches/0003-fa-batch-invariant.patch (ggml-cpu, C name): the CPU flash attention computes
# each query row by one arithmetic, whatever else shares its batch
_fa_invariant = _optional("ggml_cpu_led_fa_invariant_version", [], ctypes.c_int)


def fa_invariant_patch_version() -> int | None:
    """The batch-invariant flash-attention patch's version in the loaded ggml, or None."""
    return int(_fa_invariant()) if _fa_invariant is not None else None


def ggml_version() -> str | None:
    """ggml's version string, or None where the library predates ``ggml_version``."""
    return _ggml_version().decode() if _ggml_version is not None else None


def backend_devices() -> list[dict[str, Any]]:
    """ggml's backend devices: name, description, type (CPU, GPU, ...), backend (its
    registry's name), memory_free and memory_total in bytes."""
    devices = []
    for i in range(_dev_count()):
        dev = _dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        _dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = _dev_type(dev)
        devices.append({
            "name": _dev_name(dev).decode(), "description": _dev_description(dev).decode(),
            "type": DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else str(kind),
            "backend": _reg_name(_dev_reg(dev)).decode(),
            "memory_free": int(free.value), "memory_total": int(total.value),
        })
    return devices


def cpu_features() -> dict[str, bool]:
    """{feature: compiled in} for every ``ggml_cpu_has_<feature>`` this ggml exports."""
    out = {}
    for name in CPU_FEATURES:
        fn = _optional(f"ggml_cpu_has_{name}", [], ctypes.c_int)
        if fn is not None:
            out[name] = bool(fn())
    return out


def cpu_extra_buffer_types() -> list[str]:
    """Names of the extra buffer types the CPU device offers (e.g. CPU_REPACK, AMX): where
    llama.cpp puts weights it can repack for faster kernels, when a model is loaded with
    ``use_extra_bufts``. AMX is listed only when compiled in and the CPU has it."""
    for i in range(_dev_count()):
        dev = _dev_get(i)
        if _dev_type(dev) != DEVICE_TYPES.index("CPU"):
            continue
        proc = _reg_proc(_dev_reg(dev), b"ggml_backend_dev_get_extra_bufts")
        if not proc:
            return []
        bufts = _GetExtraBufts(proc)(dev)
        names = []
        while bufts and bufts[len(names)]:
            names.append(_buft_name(bufts[len(names)]).decode())
        return names
    return []
