"""ggml's activation rounding and the exact product of ``head.GGMLMatrix``, for every kind of
weight a head can have: the split reproduces what ggml's product sees, and the exact product
agrees with a float64 product of the dequantized weights (gguf's own dequantizer) where
ggml's product alone is off by the 8-bit rounding of a block holding a massive activation."""

from __future__ import annotations

import ctypes

import gguf
import numpy as np
import pytest
from llama_cpp import _ggml

from led_local.llama import native
from led_local.llama.activations import ActivationSplit
from led_local.llama.head import GGMLMatrix

Q = gguf.GGMLQuantizationType
# weight types and the activation format ggml's CPU product converts to for them
WEIGHTS = {Q.F16: Q.F16, Q.BF16: Q.BF16, Q.Q8_0: Q.Q8_0, Q.Q4_0: Q.Q8_0, Q.Q4_1: Q.Q8_1,
           Q.Q5_1: Q.Q8_1, Q.Q4_K: Q.Q8_K, Q.Q6_K: Q.Q8_K, Q.IQ4_NL: Q.Q8_0}
ROWS, WIDTH = 96, 512

# size_t ggml_quantize_chunk(enum ggml_type type, const float * src, void * dst, int64_t start,
#                            int64_t nrows, int64_t n_per_row, const float * imatrix);
_quantize = _ggml.libggml.ggml_quantize_chunk
_quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
_quantize.restype = ctypes.c_size_t


def _matrix(qtype: Q, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(raw bytes (ROWS, row bytes) of a random ROWS x WIDTH matrix in ``qtype``, its exact
    values as float64 through gguf's numpy dequantizer)."""
    w = (rng.standard_normal((ROWS, WIDTH)) * 0.05).astype(np.float32)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.zeros((ROWS, WIDTH // block * size), np.uint8)
    _quantize(int(qtype), w.ctypes.data, raw.ctypes.data, 0, ROWS, WIDTH, None)
    return raw, gguf.quants.dequantize(raw, qtype).astype(np.float64).reshape(ROWS, WIDTH)


def _states(rng: np.random.Generator, m: int = 6) -> np.ndarray:
    """Residual-stream-like rows: N(0, 5) with a few massive activations (up to ~500), one
    in a block of its own neighbours, as SmolLM2's raw states have."""
    x = rng.normal(0.0, 5.0, (m, WIDTH)).astype(np.float32)
    x[:, 17] = rng.uniform(300, 540, m)
    x[:, 300] = -rng.uniform(100, 250, m)
    x[::2, 301] = 120.0
    return x


@pytest.mark.parametrize("qtype", list(WEIGHTS), ids=lambda q: q.name)
def test_the_split_is_what_ggml_multiplies(qtype):
    """x and its rounding give bit-identical products (ggml converts x to exactly x1), and
    the rounding is the type's activation format."""
    rng = np.random.default_rng(int(qtype))
    raw, _ = _matrix(qtype, rng)
    m = GGMLMatrix(int(qtype), raw, ROWS, WIDTH)
    assert m.split.vec_type == int(WEIGHTS[qtype]) and m.split.rounds and m.split.known
    x = _states(rng)
    x1, x2 = m.split.split(x)
    if WEIGHTS[qtype] == Q.Q8_1:
        # Q8_1 also stores each block's sum in fp16, rounded from its unrounded scale
        np.testing.assert_allclose(m.product(x1, exact=False), m.product(x, exact=False),
                                   rtol=0, atol=1e-3 * np.abs(m.product(x)).max())
    elif WEIGHTS[qtype] == Q.Q8_K:
        # a float32 scale recomputed from x1's largest value: equal to within an ulp
        np.testing.assert_allclose(m.product(x1, exact=False), m.product(x, exact=False),
                                   rtol=1e-6, atol=1e-5)
    else:
        assert np.array_equal(m.product(x, exact=False), m.product(x1, exact=False))
    assert np.array_equal(x1 + x2, x)
    assert not np.array_equal(x1, x)  # the rounding is real
    # and idempotent (Q8_K: to within the ulp of its recomputed float32 scale)
    np.testing.assert_allclose(m.split.rounded(x1), x1, rtol=1e-6 if m.split.vec_type ==
                               Q.Q8_K else 0, atol=0)
    m.close()


@pytest.mark.parametrize("qtype", list(WEIGHTS), ids=lambda q: q.name)
def test_exact_product_matches_float64_of_the_dequantized_weights(qtype):
    rng = np.random.default_rng(100 + int(qtype))
    raw, w64 = _matrix(qtype, rng)
    m = GGMLMatrix(int(qtype), raw, ROWS, WIDTH, threads=2)
    x = _states(rng)
    want = x.astype(np.float64) @ w64.T
    exact = np.abs(m.product(x) - want).max()
    plain = np.abs(m.product(x, exact=False) - want).max()
    # Q8_1 (Q4_1 and Q5_1 weights) keeps the fp16 rounding of each block's sum: 2^-11
    bound = 1e-3 if WEIGHTS[qtype] == Q.Q8_1 else 3e-4
    assert exact <= bound * np.abs(want).max(), (exact, plain)
    if WEIGHTS[qtype] != Q.F16:  # F16 activations keep 11 bits: little to gain
        assert plain > (20 if WEIGHTS[qtype] == Q.Q8_1 else 50) * exact, (exact, plain)
    m.close()


def test_exact_rows_do_not_depend_on_what_is_multiplied_with_them():
    rng = np.random.default_rng(3)
    raw, _ = _matrix(Q.Q8_0, rng)
    m = GGMLMatrix(int(Q.Q8_0), raw, ROWS, WIDTH, threads=2)
    x = _states(rng, m=9)
    full = m.product(x)
    for k in (1, 2, 5):
        assert np.array_equal(m.product(x[:k]), full[:k])
    m.close()


def test_f32_weights_are_not_rounded():
    split = ActivationSplit(native.GGML_TYPE_F32)
    assert not split.rounds
    x = _states(np.random.default_rng(0))
    assert np.array_equal(split.rounded(x), x)


def test_q8_0_rounding_is_the_block_scale_times_int8():
    """One block of 32: scale fp16(amax / 127), values round(x / scale) in [-127, 127]."""
    split = ActivationSplit(native.GGML_TYPE_Q8_0)
    x = np.zeros((1, 32), np.float32)
    x[0, 0], x[0, 1], x[0, 2] = 508.0, 1.9, 2.1  # scale 4: 1.9 -> 0, 2.1 -> 4
    got = split.rounded(x)
    assert got[0, 0] == 508.0 and got[0, 1] == 0.0 and got[0, 2] == 4.0
    rest = split.split(x)[1][0, :3]
    assert np.array_equal(rest, np.float32([0.0, 1.9, 2.1]) - np.float32([0.0, 0.0, 4.0]))
