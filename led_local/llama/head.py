"""The LM-head projection of hidden states, through the model's own quantized head.

The product runs in ggml's CPU backend on the head tensor exactly as the GGUF stores it
(Q8_0, Q6_K, F16, ...), read in place from a memory map of the file: the same kernels llama.cpp
uses for its own logits. Each output element is an independent dot product, so a row's logits
do not depend on how many rows are projected together (BLAS gives no such guarantee), which
keeps a sequence's tokens independent of its batch.

Memory: the head costs what it costs on disk, shared with llama.cpp's own map of the file:
SmolLM2 (49,152 x 576, Q8_0) 30 MB, Gemma 3 270M (262,144 x 640, Q8_0) 178 MB, a
151,936 x 4,096 head (Qwen-7B class) 661 MB in Q8_0 or 511 MB in Q6_K. The per-call buffer is
rows x V x 4 bytes of logits (8 depths of a 150k vocabulary: 4.9 MB a row).

Precision: ggml rounds the activations to 8 bits per block before a quantized product
(``activations``), which the raw residual stream's massive activations make coarse. The
projection therefore multiplies each state and what that rounding leaves of it, together, and
adds the two (twice the rows of one product): depth logits as exact as float32 allows, at
about the cost of the quantized head. ``exact=False`` gives llama.cpp's own product.
"""

from __future__ import annotations

import ctypes

import numpy as np

from led_local.llama import native
from led_local.llama.activations import ActivationSplit
from led_local.llama.gguf_info import LOGIT_SCALE_DIVIDES, ModelInfo, read_tensors


def final_norm(states: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, *, eps: float,
               layernorm: bool) -> np.ndarray:
    """RMSNorm, or LayerNorm (mean removed; command-r and cohere2 have no bias), of the last
    axis, times ``weight`` plus ``bias``, in float32 as llama.cpp's graph computes it."""
    x = np.asarray(states, dtype=np.float32)
    e = np.float32(eps)
    if layernorm:
        x = x - x.mean(axis=-1, keepdims=True)
    y = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + e) * weight
    return y if bias is None else y + bias


# ggml's CPU product hands these matrix types (with 8-bit activations) to llamafile's tinyBLAS
# on x86, which multiplies the activation rows 4 at a time where AVX-512 gives it 32 vector
# registers (2 at a time with 16) and makes a second pass over the whole matrix for what is
# left: more than 4 rows are cheaper padded with zero rows to a multiple of 4 (SmolLM2's head,
# 2 threads, AVX-512: 14 rows 8.6 ms, padded to 16 6.6 ms). Each output is its own dot
# product, so no row's result changes (tested).
TINYBLAS_Q0_TYPES = (native.GGML_TYPE_Q4_0, native.GGML_TYPE_Q5_0, native.GGML_TYPE_Q8_0,
                     native.GGML_TYPE_IQ4_NL)


def row_quantum(ggml_type: int) -> int:
    """The row count the CPU product of a ``ggml_type`` matrix is quickest in multiples of
    (above that count; 1: any)."""
    if ggml_type in TINYBLAS_Q0_TYPES and native.cpu_features().get("avx512"):
        return 4
    return 1


class GGMLMatrix:
    """A (rows, width) matrix in a ggml type (raw bytes ``data``, kept alive here) multiplied
    by float32 rows with ggml's CPU kernels. threads: ggml CPU threads (default 1)."""

    def __init__(self, ggml_type: int, data: np.ndarray, rows: int, width: int, *,
                 threads: int = 1) -> None:
        self.rows, self.width, self.threads = rows, width, max(1, threads)
        self._data = data
        self._wctx = native.ggml_init(native.InitParams(native.ggml_tensor_overhead() * 2,
                                                        None, True))
        self._w = native.ggml_new_tensor_2d(self._wctx, ggml_type, width, rows)
        native.GGMLTensor.from_address(self._w).data = data.ctypes.data
        self._scratch = np.empty(0, np.uint8)
        self._work = np.empty(0, np.uint8)
        self.split = ActivationSplit(ggml_type)
        self.quantum = row_quantum(ggml_type)

    def close(self) -> None:
        if self._wctx:
            native.ggml_free(self._wctx)
            self._wctx = None

    def __del__(self) -> None:
        self.close()

    def product(self, x: np.ndarray, *, exact: bool = True) -> np.ndarray:
        """x (m, width) float32 times the matrix: (m, rows) float32. ``exact``: the product of
        x and of what ggml's activation rounding leaves of it (``activations``), in one ggml
        graph of 2m rows, added; else ggml's product of x alone, as llama.cpp computes it.
        Each row's result depends on that row alone, whatever else is multiplied with it."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not (exact and self.split.rounds and self.split.known):
            return self._mul(x)
        m = x.shape[0]
        _, rest = self.split.split(x)
        z = self._mul(np.concatenate([x, rest]))
        z[:m] += z[m:]
        return z[:m]

    def _mul(self, x: np.ndarray) -> np.ndarray:
        """ggml's product of the float32 rows x (m, width): (m, rows) float32, one graph."""
        m, k = x.shape
        q = self.quantum
        if m > q and m % q:  # zero rows to the kernel's tile (``row_quantum``)
            x = np.concatenate([x, np.zeros((q - m % q, k), np.float32)])
            return self._mul(x)[:m]
        need = (native.ggml_tensor_overhead() * 8 + native.ggml_graph_overhead()
                + 4 * m * (self.rows + k) + (1 << 12))
        if self._scratch.size < need:
            self._scratch = np.empty(need, np.uint8)
        ctx = native.ggml_init(native.InitParams(self._scratch.size, self._scratch.ctypes.data,
                                                 False))
        try:
            xt = native.ggml_new_tensor_2d(ctx, native.GGML_TYPE_F32, k, m)
            ctypes.memmove(native.GGMLTensor.from_address(xt).data, x.ctypes.data, x.nbytes)
            y = native.ggml_mul_mat(ctx, self._w, xt)
            graph = native.ggml_new_graph(ctx)
            native.ggml_build_forward_expand(graph, y)
            # the work buffer as the plan sizes it (the converted activations; K-quant
            # kernels add a tile buffer per thread)
            plan = native.ggml_graph_plan(graph, self.threads, None)
            if self._work.size < plan.work_size:
                self._work = np.empty(plan.work_size, np.uint8)
            plan.work_data = self._work.ctypes.data
            status = native.ggml_graph_compute(graph, ctypes.byref(plan))
            if status != 0:
                raise RuntimeError(f"ggml graph compute failed with status {status}")
            out = np.empty((m, self.rows), np.float32)
            ctypes.memmove(out.ctypes.data, native.GGMLTensor.from_address(y).data, out.nbytes)
            return out
        finally:
            native.ggml_free(ctx)


class LMHead:
    """Projects hidden states (n, n_embd) to logits (n, V) exactly as the model's graph does
    after its last block: optional final norm, head product, output bias, logit scale and
    final soft-capping (the last three at every depth, LED.md).

    threads: ggml CPU threads for the product (default 1).
    """

    def __init__(self, info: ModelInfo, *, threads: int = 1) -> None:
        self.info = info
        names = [info.norm_tensor]
        names += ["output_norm.bias"] if "output_norm.bias" in info.gguf.tensors else []
        names += ["output.bias"] if info.has_output_bias else []
        t = read_tensors(info.gguf, names)
        self.norm_weight = t[info.norm_tensor]
        self.norm_bias = t.get("output_norm.bias")
        self.bias = t.get("output.bias")
        self._file = info.gguf  # keeps the map (and so the head's bytes) alive
        head = self._file.tensors[info.head_tensor]
        self.n_vocab, width = head.shape
        if width != info.n_embd:
            raise ValueError(f"head {info.head_tensor} has width {width}, model {info.n_embd}")
        self.matrix = GGMLMatrix(head.ggml_type, self._file.tensor_bytes(info.head_tensor),
                                 self.n_vocab, width, threads=threads)

    def close(self) -> None:
        self.matrix.close()

    def final_norm(self, states: np.ndarray) -> np.ndarray:
        """The model's final norm with its weights (``final_norm``)."""
        return final_norm(states, self.norm_weight, self.norm_bias, eps=self.info.norm_eps,
                          layernorm=self.info.norm_is_layernorm)

    def project(self, states: np.ndarray, *, norm: bool, exact: bool = True,
                extras: bool = True) -> np.ndarray:
        """Logits (n, V) float32 of hidden states (n, n_embd); ``norm``: final norm first.
        ``exact`` (the default): without ggml's 8-bit rounding of the states
        (``GGMLMatrix.product``); False: the product as llama.cpp computes its own logits.
        ``extras``: the logit scale and soft-capping after the head (the bias always)."""
        x = self.final_norm(states) if norm else np.asarray(states, dtype=np.float32)
        out = self.matrix.product(x, exact=exact)
        info = self.info
        if self.bias is not None:
            out += self.bias
        if not extras:
            return out
        if info.logit_scale != 1.0:
            if info.architecture in LOGIT_SCALE_DIVIDES:
                out *= np.float32(1.0 / info.logit_scale)
            else:
                out *= np.float32(info.logit_scale)
        if info.final_softcap:
            cap = np.float32(info.final_softcap)
            np.tanh(out / cap, out=out)
            out *= cap
        return out
