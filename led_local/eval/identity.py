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
    """led-local's version, llama-cpp-python's version and whether it offloads to a GPU."""
    import llama_cpp

    from led_local import __version__

    gpu = "gpu" if llama_cpp.llama_supports_gpu_offload() else "cpu"
    return f"led-local {__version__}, llama-cpp-python {llama_cpp.__version__}, {gpu}"
