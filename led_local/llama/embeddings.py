"""The token-embedding matrix, read from the GGUF (llama.cpp has no tensor accessor), as the
rows an embedding-input batch must carry: the whole matrix in float32 (``input_embeddings``),
or rows dequantized on demand from the file's memory map (``LazyInputRows``), which hold no
copy and give the very same values row for row.

llama.cpp's embedding-input path feeds a row to the first block as it is, while its token
path looks the row up and, on Gemma graphs, multiplies it by sqrt(n_embd). So the matrix is
returned pre-scaled where the graph scales token input: feeding row t then gives the very
logits that feeding token t does (tested bit for bit on both bundled models).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from led_local.errors import UnsupportedModelError
from led_local.llama.gguf_info import ModelInfo

# graphs whose token path scales the looked-up row by sqrt(n_embd) and the raw path does not
SCALED_INPUT = frozenset({"gemma", "gemma2", "gemma3"})
# graphs whose embedding input has been checked against the token path
EMBEDDING_INPUT_ARCHITECTURES = frozenset(
    {"llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "mistral3"})

CHUNK_ROWS = 8192  # rows dequantized at a time: the peak stays near the float32 matrix
_cache: dict[str, np.ndarray] = {}
_lock = threading.Lock()


def input_scale(info: ModelInfo) -> float:
    """The factor the model's token path applies to an embedding row (1 or sqrt(n_embd))."""
    return math.sqrt(info.n_embd) if info.architecture in SCALED_INPUT else 1.0


def input_embeddings(info: ModelInfo) -> np.ndarray:
    """(V, n_embd) float32 input rows (dequantized ``token_embd.weight``, pre-scaled), read
    once per process and model file and shared (read-only) by every engine."""
    _check_architecture(info)
    key = str(info.path.resolve())
    with _lock:
        if key not in _cache:
            _cache[key] = _read(info)
        return _cache[key]


def input_rows(info: ModelInfo, *, resident: bool = True) -> np.ndarray | LazyInputRows:
    """The input rows of ``info``'s model: the shared float32 matrix when ``resident``, else
    a LazyInputRows over the file (no copy; for an approximate mixture over a few rows)."""
    if resident:
        return input_embeddings(info)
    _check_architecture(info)
    return LazyInputRows(info)


class LazyInputRows:
    """``token_embd.weight`` read row by row from the GGUF's memory map: ``rows[ids]`` gives
    (len(ids), n_embd) float32 (or (n_embd,) for one int id), dequantized and pre-scaled
    exactly as ``input_embeddings`` does, so a row is bit-identical to the matrix's."""

    def __init__(self, info: ModelInfo) -> None:
        from gguf.constants import GGMLQuantizationType

        t = info.gguf.tensors["token_embd.weight"]
        self.shape = tuple(int(x) for x in t.shape)
        self._raw = info.gguf.tensor_bytes(t.name).reshape(self.shape[0], -1)
        self._qtype = GGMLQuantizationType(t.ggml_type)
        self._scale = np.float32(input_scale(info))
        self.nbytes = 0  # resident float32 bytes: none

    def __getitem__(self, ids) -> np.ndarray:
        one = np.ndim(ids) == 0
        idx = np.atleast_1d(np.asarray(ids, np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"token id out of range 0..{self.shape[0] - 1}")
        rows = _dequantize(self._raw[idx], self._qtype, self.shape[1], self._scale)
        return rows[0] if one else rows


def _check_architecture(info: ModelInfo) -> None:
    if info.architecture not in EMBEDDING_INPUT_ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture '{info.architecture}' is not supported for embedding input "
            f"(supported: {', '.join(sorted(EMBEDDING_INPUT_ARCHITECTURES))})")


def _dequantize(raw: np.ndarray, qtype, width: int, scale: np.float32) -> np.ndarray:
    from gguf.quants import dequantize

    rows = np.asarray(dequantize(raw, qtype), np.float32).reshape(-1, width)
    if scale != 1.0:
        rows *= scale
    return rows


def _read(info: ModelInfo) -> np.ndarray:
    from gguf.constants import GGMLQuantizationType

    g = info.gguf
    t = g.tensors["token_embd.weight"]
    n_rows, width = t.shape
    raw = g.tensor_bytes(t.name).reshape(n_rows, -1)  # a view of the file's memory map
    qtype = GGMLQuantizationType(t.ggml_type)
    scale = np.float32(input_scale(info))
    out = np.empty((n_rows, width), np.float32)
    for i in range(0, n_rows, CHUNK_ROWS):
        rows = _dequantize(raw[i:i + CHUNK_ROWS], qtype, width, scale)
        out[i:i + len(rows)] = rows
    out.flags.writeable = False
    return out
