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
from led_local.llama.gguf_info import ModelInfo, read_tensors

# graphs whose token path scales the looked-up row by sqrt(n_embd) and the raw path does not
SCALED_INPUT = frozenset({"gemma", "gemma2", "gemma3"})
# graphs whose embedding input has been checked against the token path
EMBEDDING_INPUT_ARCHITECTURES = frozenset(
    {"llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "mistral3"})

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
            e = read_tensors(info.gguf, ["token_embd.weight"])["token_embd.weight"]
            scale = input_scale(info)
            if scale != 1.0:
                e *= np.float32(scale)
            e.flags.writeable = False
            _cache[key] = e
        return _cache[key]
