"""The token-embedding matrix, read from the GGUF (llama.cpp has no tensor accessor), as the
rows an embedding-input batch must carry.

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
    if info.architecture not in EMBEDDING_INPUT_ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture '{info.architecture}' is not supported for embedding input "
            f"(supported: {', '.join(sorted(EMBEDDING_INPUT_ARCHITECTURES))})")
    key = str(info.path.resolve())
    with _lock:
        if key not in _cache:
            _cache[key] = _read(info)
        return _cache[key]


def _read(info: ModelInfo) -> np.ndarray:
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    g = info.gguf
    t = g.tensors["token_embd.weight"]
    n_rows, width = t.shape
    raw = g.tensor_bytes(t.name).reshape(n_rows, -1)  # a view of the file's memory map
    qtype = GGMLQuantizationType(t.ggml_type)
    scale = np.float32(input_scale(info))
    out = np.empty((n_rows, width), np.float32)
    for i in range(0, n_rows, CHUNK_ROWS):
        rows = dequantize(raw[i:i + CHUNK_ROWS], qtype).reshape(-1, width)
        out[i:i + len(rows)] = rows
        if scale != 1.0:
            out[i:i + len(rows)] *= scale
    out.flags.writeable = False
    return out
