"""The CPU flash attention of patches/0003-fa-batch-invariant.patch, at the ggml op itself.

A query row's output must be bit-identical whatever else shares the call: alone or among many
tokens (the tiled path of stock ggml), alone or among other sequences' streams, with the KV
view padded by masked cells (llama.cpp pads it to the longest stream of the batch), with any
number of threads. Stock ggml fails this: it splits a lone query's KV by the thread count and
computes many queries with another kernel. The values are checked against float64 attention.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from led_local.llama import native

pytestmark = pytest.mark.skipif(native.fa_invariant_patch_version() is None,
                                reason="llama.cpp built without patches/0003 (make install)")

F32, F16 = 0, 1
_vp = ctypes.c_void_p


def _fn(name, argtypes, restype):
    fn = getattr(native._ggml.libggml, name)
    fn.argtypes, fn.restype = argtypes, restype
    return fn


_new_4d = _fn("ggml_new_tensor_4d", [_vp, ctypes.c_int] + [ctypes.c_int64] * 4, _vp)
_fa = _fn("ggml_flash_attn_ext", [_vp, _vp, _vp, _vp, _vp, ctypes.c_float, ctypes.c_float,
                                  ctypes.c_float], _vp)
_sinks = _fn("ggml_flash_attn_ext_add_sinks", [_vp, _vp], None)


def _tensor(ctx, a: np.ndarray, kind: int):
    """A ggml tensor holding ``a`` (numpy axes reversed: ggml's ne0 is the last axis)."""
    a = np.ascontiguousarray(a, np.float16 if kind == F16 else np.float32)
    shape = list(reversed(a.shape)) + [1] * (4 - a.ndim)
    t = _new_4d(ctx, kind, *shape)
    ctypes.memmove(native.GGMLTensor.from_address(t).data, a.ctypes.data, a.nbytes)
    return t


def flash_attn(q, k, v, mask, *, scale, softcap=0.0, sinks=None, threads=1) -> np.ndarray:
    """ggml_flash_attn_ext on the CPU. q (S, H, T, D) float32, k and v (S, Hkv, N, D) float16,
    mask (S, T, N) float16: out (S, T, H, D) float32."""
    ctx = native.ggml_init(native.InitParams(64 << 20, None, False))
    try:
        qt, kt, vt = _tensor(ctx, q, F32), _tensor(ctx, k, F16), _tensor(ctx, v, F16)
        mt = _tensor(ctx, mask[:, None], F16)
        out = _fa(ctx, qt, kt, vt, mt, scale, 0.0, softcap)
        if sinks is not None:
            _sinks(out, _tensor(ctx, sinks, F32))
        graph = native.ggml_new_graph(ctx)
        native.ggml_build_forward_expand(graph, out)
        assert native.ggml_graph_compute_with_ctx(ctx, graph, threads) == 0
        res = np.empty(q.shape[:1] + q.shape[2:3] + q.shape[1:2] + v.shape[3:], np.float32)
        ctypes.memmove(res.ctypes.data, native.GGMLTensor.from_address(out).data, res.nbytes)
        return res
    finally:
        native.ggml_free(ctx)


def reference(q, k, v, mask, *, scale, softcap=0.0, sinks=None) -> np.ndarray:
    """The same attention in float64."""
    s_, h, t, d = q.shape
    rep = h // k.shape[1]
    kk = np.repeat(k.astype(np.float64), rep, axis=1)
    vv = np.repeat(v.astype(np.float64), rep, axis=1)
    x = np.einsum("shtd,shnd->shtn", q.astype(np.float64), kk) * scale
    if softcap:
        x = softcap * np.tanh(x / softcap)
    x = x + mask.astype(np.float64)[:, None]
    m = x.max(axis=-1, keepdims=True)
    if sinks is not None:
        m = np.maximum(m, sinks.astype(np.float64)[None, :, None, None])
    e = np.exp(x - m)
    z = e.sum(axis=-1, keepdims=True)
    if sinks is not None:
        z = z + np.exp(sinks.astype(np.float64)[None, :, None, None] - m)
    return np.einsum("shtn,shnd->sthd", e / z, vv)


def _causal(t: int, n: int, past: int, rng) -> np.ndarray:
    """(t, n) mask: token i sees cells [0, past + i], a few random holes, nothing beyond."""
    mask = np.zeros((t, n), np.float16)
    for i in range(t):
        mask[i, past + i + 1:] = -np.inf
    holes = rng.random((t, n)) < 0.05
    holes[:, 0] = False
    mask[holes] = -np.inf
    return mask


@pytest.mark.parametrize("d,heads,kv_heads,softcap,with_sinks", [
    (64, 6, 2, 0.0, False),    # grouped-query attention, 3 query heads per KV head
    (64, 4, 1, 30.0, False),   # one KV head, soft-capped scores (Gemma 2)
    (128, 2, 2, 0.0, True),    # no grouping, attention sinks (gpt-oss)
])
def test_a_row_does_not_depend_on_its_batch(d, heads, kv_heads, softcap, with_sinks):
    rng = np.random.default_rng(d + heads)
    t, past = 80, 620  # 80 queries at positions 620..699: 700 cells, chunks of 256
    n = past + t
    scale = 1.0 / np.sqrt(d)
    q = rng.normal(size=(1, heads, t, d)).astype(np.float32)
    k = rng.normal(size=(1, kv_heads, n, d)).astype(np.float16)
    v = rng.normal(size=(1, kv_heads, n, d)).astype(np.float16)
    mask = _causal(t, n, past, rng)[None]
    sinks = rng.normal(size=heads).astype(np.float32) if with_sinks else None
    kw = dict(scale=scale, softcap=softcap, sinks=sinks)

    many = flash_attn(q, k, v, mask, threads=2, **kw)  # stock: the tiled kernel
    want = reference(q, k, v, mask, **kw)
    assert np.abs(many - want).max() < 2e-3

    for i in (0, 37, 79):
        row = many[0, i]
        for threads in (1, 2, 3, 4):  # stock: the KV split in `threads` pieces
            alone = flash_attn(q[:, :, i:i + 1], k, v, mask[:, i:i + 1], threads=threads, **kw)
            assert np.array_equal(alone[0, 0], row), (i, threads)
        # among 3 other sequences, each in its own stream, the KV view padded to 1,100 cells
        # by the longest of them: the row's extra cells are masked
        pad = 1100
        qs = rng.normal(size=(4, heads, 1, d)).astype(np.float32)
        ks = rng.normal(size=(4, kv_heads, pad, d)).astype(np.float16)
        vs = rng.normal(size=(4, kv_heads, pad, d)).astype(np.float16)
        ms = np.zeros((4, 1, pad), np.float16)
        ms[:, :, 900:] = -np.inf
        qs[2], ks[2, :, :n], vs[2, :, :n], ms[2, 0, :n] = q[0, :, i:i + 1], k[0], v[0], mask[0, i]
        ms[2, 0, n:] = -np.inf
        batch = flash_attn(qs, ks, vs, ms, threads=2, **kw)
        assert np.array_equal(batch[2, 0], row), i
        others = reference(qs, ks, vs, ms, **kw)
        assert np.abs(batch - others).max() < 2e-3


def test_a_fully_masked_row_gives_zeros_or_the_sink_alone():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(1, 2, 2, 64)).astype(np.float32)
    k = rng.normal(size=(1, 2, 300, 64)).astype(np.float16)
    v = rng.normal(size=(1, 2, 300, 64)).astype(np.float16)
    mask = np.zeros((1, 2, 300), np.float16)
    mask[0, 1] = -np.inf
    out = flash_attn(q, k, v, mask, scale=0.125, threads=2)
    assert np.all(out[0, 1] == 0) and np.all(np.isfinite(out))
