"""What ggml's CPU product does to the activations, and the split that undoes it.

ggml multiplies a quantized matrix by float32 activations after converting the activations
to the matrix type's ``vec_dot_type`` (ggml-cpu's type traits): Q8_0 or Q8_1 (blocks of 32
int8 values sharing one fp16 scale, the block's largest magnitude / 127), Q8_K (blocks of 256
with a float32 scale), F16 or BF16. One value far larger than the rest of its block coarsens
the whole block: the raw residual stream has such massive activations (SmolLM2-135M: up to
~540 where the median is ~7; Gemma 3 270M: ~30,000 where it is ~60), so an LM head applied to
it through ggml sees the other values of those blocks rounded to steps of ~4 (Gemma: ~240).

``ActivationSplit.split(x)`` returns x1, exactly what ggml's own conversion makes of x, and
x2 = x - x1. The product of x is the product of x1 (ggml converts x to x1's blocks), and the
product of x2 carries the rounding of x2 alone, whose blocks are at most half a step of x's:
W x + W x2 leaves an error of about 2^-16 of a block's largest value where W x alone leaves
2^-8 (tests/test_activations.py measures it for every format). One rounding is left for Q8_1
(the format of Q4_1 and Q5_1 weights), which also stores each block's sum in fp16 for the
weights' offsets: its error, 2^-11 of a block's sum times the offset, is 20 to 50 times
smaller than the rounding it replaces rather than some 300 times.
"""

from __future__ import annotations

import numpy as np

from led_local.llama import native

# vec_dot_type -> (numpy dtype of one block, values per block) of the block formats (ggml-common.h)
_BLOCKS = {
    native.GGML_TYPE_Q8_0: (np.dtype([("d", "<f2"), ("qs", "i1", 32)]), 32),
    native.GGML_TYPE_Q8_1: (np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", 32)]), 32),
    native.GGML_TYPE_Q8_K: (np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)]),
                            256),
}
_HALVES = (native.GGML_TYPE_F16, native.GGML_TYPE_BF16)


class ActivationSplit:
    """The activation rounding of ggml's CPU product with a matrix of ``weight_type``.

    ``rounds``: whether the product rounds its activations at all (an F32 matrix does not);
    ``known``: whether this module can reproduce the rounding (every vec_dot_type of this
    ggml: F16, BF16, Q8_0, Q8_1, Q8_K)."""

    def __init__(self, weight_type: int) -> None:
        self.vec_type = native.cpu_vec_dot_type(weight_type)
        self.rounds = self.vec_type != native.GGML_TYPE_F32
        self.known = self.vec_type in _BLOCKS or self.vec_type in _HALVES
        self._from_float = native.cpu_from_float(self.vec_type) if self.rounds else None

    def rounded(self, x: np.ndarray) -> np.ndarray:
        """What ggml's conversion makes of the float32 rows x (m, n): (m, n) float32.
        n must be a multiple of the format's block (the product requires it too)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.rounds:
            return x.copy()
        if not self.known:
            raise ValueError(f"ggml type {self.vec_type}'s activation format is not known")
        if self.vec_type in _HALVES:
            buf = np.empty(x.shape, np.uint16)
            self._from_float(x.ctypes.data, buf.ctypes.data, x.size)
            if self.vec_type == native.GGML_TYPE_F16:
                return buf.view(np.float16).astype(np.float32)
            return (buf.astype(np.uint32) << 16).view(np.float32)
        dtype, per = _BLOCKS[self.vec_type]
        if x.shape[-1] % per:
            raise ValueError(f"rows of {x.shape[-1]} values are not whole blocks of {per}")
        blocks = np.empty(x.size // per, dtype)
        self._from_float(x.ctypes.data, blocks.ctypes.data, x.size)
        # the block's scale times its int8 values, in float32 as ggml's dequantizers compute it
        values = blocks["qs"].astype(np.float32) * blocks["d"].astype(np.float32)[:, None]
        return values.reshape(x.shape)

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x1, x2): x1 = ``rounded(x)``, x2 = x - x1 (float32 rows (m, n) each)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        x1 = self.rounded(x)
        return x1, x - x1
