"""What identifies the model file and the build behind a run, for fingerprints and checks.

``model_sha256`` hashes the whole GGUF (remembered per process by path, size and mtime, so a
command hashes a file once); ``build_id`` names the software that computes the numbers, since
a different llama.cpp or backend may pick different tokens from the same weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from led_local.errors import LedError

_CHUNK = 1 << 22
_hashes: dict[tuple[str, int, int], str] = {}


def model_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (64 hex digits) of the file at ``path``."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _hashes:
            h = hashlib.sha256()
            with p.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            _hashes[key] = h.hexdigest()
    except OSError as e:
        raise LedError(f"cannot read the model file {p}: {e.strerror or e}") from None
    return _hashes[key]


def build_id() -> str:
    """led-local's version, llama-cpp-python's version, whether it offloads to a GPU and, where
    batch-invariant runs use flash attention (patches/0003), that: its arithmetic differs from
    the plain attention's, so runs made with and without it are not mixed."""
    import llama_cpp

    from led_local import __version__
    from led_local.llama.runtime import invariant_flash_attention

    gpu = "gpu" if llama_cpp.llama_supports_gpu_offload() else "cpu"
    attention = ", flash attention" if invariant_flash_attention() else ""
    return f"led-local {__version__}, llama-cpp-python {llama_cpp.__version__}, {gpu}{attention}"
