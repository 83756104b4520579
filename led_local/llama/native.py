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
# enum ggml_status ggml_graph_compute_with_ctx(ctx, struct ggml_cgraph * cgraph, int n_threads);
# (ggml-cpu.h; the CPU backend is part of every build, GPU ones included)
ggml_graph_compute_with_ctx = _bind("ggml_graph_compute_with_ctx", [_vp, _vp, ctypes.c_int],
                                    ctypes.c_int)


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


_log_callback_ref: list[Any] = []  # ctypes callbacks must outlive every call llama.cpp makes


def set_llama_logging(sink: Callable[[str], None] | None) -> None:
    """Route llama.cpp's and ggml's log lines to ``sink``, or drop them when it is None."""

    def _log(_level: int, text: bytes | None, _user: int | None) -> None:
        if sink is not None and text:
            sink(text.decode("utf-8", "replace"))

    cb = llama_cpp.llama_log_callback(_log)
    _log_callback_ref[:] = [cb]
    llama_cpp.llama_log_set(cb, None)
