"""ggml's CPU flash attention at the op, as llama.cpp calls it: the KV laid out as in its cache
(a cell holds every KV head, so a head's rows are strided), one node per layer, 30 layers
(SmolLM2: 9 query heads, 3 KV heads, 64-wide), so that the KV is read from memory and not
from cache, as in a decode step. Reports CPU time per call of the 30-node graph on one thread
(load on a shared machine distorts wall time, not CPU time), best of 3 x reps.

    .venv/bin/python bench/fa_bench.py

Run it against another build's libggml-cpu (stock llama.cpp's, say) by putting that library
in place of the venv's; patches/README.md has the stock and patched figures side by side.
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from led_local.llama import native  # noqa: E402

F32, F16 = 0, 1
_vp = ctypes.c_void_p


def _fn(name, argtypes, restype):
    fn = getattr(native._ggml.libggml, name)
    fn.argtypes, fn.restype = argtypes, restype
    return fn


_new_4d = _fn("ggml_new_tensor_4d", [_vp, ctypes.c_int] + [ctypes.c_int64] * 4, _vp)
_permute = _fn("ggml_permute", [_vp, _vp] + [ctypes.c_int] * 4, _vp)
_fa = _fn("ggml_flash_attn_ext", [_vp, _vp, _vp, _vp, _vp, ctypes.c_float, ctypes.c_float,
                                  ctypes.c_float], _vp)


def _tensor(ctx, a: np.ndarray, kind: int):
    a = np.ascontiguousarray(a, np.float16 if kind == F16 else np.float32)
    t = _new_4d(ctx, kind, *(list(reversed(a.shape)) + [1] * (4 - a.ndim)))
    ctypes.memmove(native.GGMLTensor.from_address(t).data, a.ctypes.data, a.nbytes)
    return t


def bench(streams: int, tokens: int, n_kv: int, valid: int, *, heads: int = 9,
          kv_heads: int = 3, d: int = 64, layers: int = 30, reps: int = 10) -> float:
    """ms of CPU time per graph of ``layers`` flash-attention nodes: ``tokens`` queries per
    stream at positions valid - tokens .. valid - 1, causal, over ``n_kv`` cells."""
    rng = np.random.default_rng(0)
    ctx = native.ggml_init(native.InitParams(1 << 30, None, False))
    try:
        graph = native.ggml_new_graph(ctx)
        mask = np.zeros((streams, 1, tokens, n_kv), np.float16)
        for i in range(tokens):
            mask[:, 0, i, valid - tokens + i + 1:] = -np.inf
        for _ in range(layers):
            # as llama.cpp stores them: q [d, heads, tokens], k and v [d, kv_heads, cells]
            q = rng.normal(size=(streams, tokens, heads, d)).astype(np.float32)
            k = rng.normal(size=(streams, n_kv, kv_heads, d)).astype(np.float16)
            v = rng.normal(size=(streams, n_kv, kv_heads, d)).astype(np.float16)
            out = _fa(ctx, _permute(ctx, _tensor(ctx, q, F32), 0, 2, 1, 3),
                      _permute(ctx, _tensor(ctx, k, F16), 0, 2, 1, 3),
                      _permute(ctx, _tensor(ctx, v, F16), 0, 2, 1, 3),
                      _tensor(ctx, mask, F16), 1 / np.sqrt(d), 0.0, 0.0)
            native.ggml_build_forward_expand(graph, out)
        native.ggml_graph_compute_with_ctx(ctx, graph, 1)
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            for _ in range(reps):
                native.ggml_graph_compute_with_ctx(ctx, graph, 1)
            best = min(best, (time.process_time() - t0) / reps)
        return best * 1e3
    finally:
        native.ggml_free(ctx)


CASES = [
    ("decode, 1 sequence, 300 cells", (1, 1, 512, 300), 10),
    ("decode, 1 sequence, 4,000 cells", (1, 1, 4096, 4000), 10),
    ("decode, 8 sequences, 300 cells each", (8, 1, 512, 300), 10),
    ("decode, 8 sequences, 1,000 cells each", (8, 1, 1024, 1000), 5),
    ("prompt, 512 tokens at 3,584-4,095", (1, 512, 4096, 4096), 1),
]


def main() -> None:
    version = native.fa_invariant_patch_version()
    print(f"flash attention, {'patch 0003' if version else 'stock'}, 30 layers, 1 thread, "
          "ms of CPU time")
    for name, args, reps in CASES:
        print(f"  {name:40} {bench(*args, reps=reps):9.2f}", flush=True)


if __name__ == "__main__":
    main()
