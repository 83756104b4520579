"""Hidden-state capture: the residual stream at LED's depths, for every output row of a decode.

States are named by Hugging Face's ``output_hidden_states`` index h: h = 0 is the input of
block 0 (the embeddings, ``embd``, or ``inp_scaled`` for gemma), h >= 1 the output of block
h-1, ``l_out-(h-1)`` in llama.cpp's graph, which is also the input of block h. LED's depth j
(1..d-1) is h = L-1-j (LED.md); DoLa's premature layers are h directly. Two ways, same result:

- ``CallbackCapture`` (any llama.cpp build): the context's eval callback asks for the
  ``l_out-*`` tensors and copies the output rows out with ``ggml_backend_tensor_get``, so it
  works for tensors in GPU memory too. Intermediate ``l_out`` tensors carry every token of the
  ubatch (only the last block is pruned to output rows), so rows are picked by batch position.
- ``LayerInputCapture`` (the patched build): llama.cpp's own layer-input export, enabled with
  ``llama_set_embeddings_layer_inp``; no Python runs inside the graph computation.

Both rely on the unified KV cache (``Runtime`` sets it), under which llama.cpp splits a batch
into ubatches in order, so batch position p is row p - offset of the ubatch that holds it.
"""

from __future__ import annotations

import ctypes

import numpy as np

from led_local.errors import UnsupportedModelError
from led_local.llama import native


def tensor_name(h: int, architecture: str) -> str:
    """llama.cpp's graph name of hidden state h (Hugging Face numbering): ``l_out-{h-1}``, or
    the architecture's own block-output name (``gguf_info.BLOCK_OUTPUTS``)."""
    from led_local.llama.gguf_info import BLOCK_OUTPUTS

    if h > 0:
        return f"{BLOCK_OUTPUTS.get(architecture, 'l_out')}-{h - 1}"
    return "inp_scaled" if architecture.startswith("gemma") else "embd"


class CallbackCapture:
    """Copies hidden-state rows from inside llama.cpp's graph computation.

    layers: hidden-state indices h in the order wanted; n_embd: hidden width.
    Create it before the context, pass ``self.callback`` as the context's eval callback.
    """

    path = "eval-callback"

    def __init__(self, layers: list[int], n_embd: int, *, architecture: str = "llama") -> None:
        self.layers = list(layers)
        self.n_embd = n_embd
        self._slot = {tensor_name(h, architecture).encode(): s for s, h in enumerate(self.layers)}
        self._architecture = architecture
        self.callback = native.EvalCallback(self._on_tensor)
        self.enabled = False
        self.error: str | None = None
        self._states = np.zeros((len(self.layers), 0, n_embd), np.float32)
        self._positions = np.zeros(0, np.int64)
        self._seen = [0] * len(self.layers)

    def attach(self, runtime) -> None:  # noqa: ARG002 - the callback was set at creation
        """Nothing to do: the callback was given to the context at creation."""

    def begin(self, positions: np.ndarray) -> None:
        """Arm for one decode whose output rows sit at batch ``positions`` (ascending)."""
        self._positions = np.asarray(positions, np.int64)
        n = len(self._positions)
        if self._states.shape[1] != n:
            self._states = np.empty((len(self.layers), n, self.n_embd), np.float32)
        self._seen = [0] * len(self.layers)
        self.error = None
        self.enabled = n > 0

    def _on_tensor(self, t: int, ask: bool, _user: int | None) -> bool:
        if not self.enabled:
            return not ask
        slot = self._slot.get(ctypes.string_at(t + native.TENSOR_NAME_OFFSET))
        if slot is None:
            return not ask  # ask: not wanted; not ask: keep computing
        if ask:
            return True
        try:
            self._copy(t, slot)
        except Exception as e:  # never let an exception cross the C boundary
            self.error = f"{type(e).__name__}: {e}"
        return True

    def _copy(self, t: int, slot: int) -> None:
        tensor = native.GGMLTensor.from_address(t)
        if tensor.type != native.GGML_TYPE_F32 or tensor.ne[0] != self.n_embd:
            raise ValueError(f"unexpected block-output tensor type {tensor.type} or width "
                             f"{tensor.ne[0]}")
        n_tok = int(tensor.ne[1])
        row_bytes = int(tensor.nb[1])
        start = self._seen[slot]
        self._seen[slot] = start + n_tok
        pos = self._positions
        lo, hi = np.searchsorted(pos, [start, start + n_tok])
        if lo == hi:
            return
        dst = self._states[slot]
        first, last = int(pos[lo]) - start, int(pos[hi - 1]) - start
        if last - first == hi - lo - 1 and row_bytes == self.n_embd * 4:
            # contiguous rows (every token an output, or one trailing row): one copy
            native.tensor_get(t, dst[lo:hi].ctypes.data, first * row_bytes, (hi - lo) * row_bytes)
            return
        for i in range(lo, hi):
            native.tensor_get(t, dst[i].ctypes.data, (int(pos[i]) - start) * row_bytes,
                              self.n_embd * 4)

    def collect(self) -> np.ndarray:
        """States of the last decode: (n_outputs, len(layers), n_embd) float32."""
        if self.error:
            raise RuntimeError(f"hidden-state capture failed: {self.error}")
        n = len(self._positions)
        if n and min(self._seen) == 0:
            missing = [h for h, s in zip(self.layers, self._seen) if s == 0]
            raise UnsupportedModelError(
                f"the model's graph has no tensor {tensor_name(missing[0], self._architecture)}: "
                "this architecture does not expose its blocks' outputs"
            )
        self.enabled = False
        return self._states.transpose(1, 0, 2)


class LayerInputCapture:
    """Reads block inputs from llama.cpp's layer-input export (patched build).

    layers: hidden-state indices h; h is the input of block h, llama.cpp's layer input h.
    """

    path = "layer-inp"

    def __init__(self, layers: list[int], n_embd: int) -> None:
        self.layers = list(layers)
        self.n_embd = n_embd
        self.callback = None
        self._runtime = None
        self._positions = np.zeros(0, np.int64)

    def attach(self, runtime) -> None:
        """Enable the export of the needed block inputs on the runtime's context."""
        self._runtime = runtime
        for il in self.layers:
            native.set_layer_inp(runtime.ctx, il, True)

    def begin(self, positions: np.ndarray) -> None:
        self._positions = np.asarray(positions, np.int64)

    def collect(self) -> np.ndarray:
        """States of the last decode: (n_outputs, len(layers), n_embd) float32."""
        rt = self._runtime
        n = len(self._positions)
        out = np.empty((n, len(self.layers), self.n_embd), np.float32)
        if n == 0:
            return out
        rows = int(self._positions[-1]) + 1
        for s, il in enumerate(self.layers):
            ptr = native.get_layer_inp(rt.ctx, il)
            arr = np.ctypeslib.as_array(ptr, shape=(rows, self.n_embd))
            out[:, s, :] = arr[self._positions]
        return out


def _layer_inp_ok(info) -> bool:
    """Whether this build and architecture can use the layer-input export."""
    from led_local.llama.gguf_info import LAYER_INP_ARCHITECTURES

    patched = native.layer_inp_patch_version() is not None
    return patched and info.architecture in LAYER_INP_ARCHITECTURES


def make_capture(info, layers: list[int], *, prefer: str = "auto"):
    """The capture for this build and architecture: ``prefer`` is auto, callback or layer-inp.

    auto picks the layer-input export on the patched build for architectures whose graph
    registers block inputs there, and the eval callback otherwise.
    """
    from led_local.llama.gguf_info import LAYER_INP_ARCHITECTURES

    layer_inp_ok = _layer_inp_ok(info)
    if prefer == "layer-inp" and not layer_inp_ok:
        raise UnsupportedModelError(
            "`capture` layer-inp needs led-local's patched llama.cpp (make install) and one of "
            f"the architectures {', '.join(sorted(LAYER_INP_ARCHITECTURES))}"
        )
    if prefer == "layer-inp" or (prefer == "auto" and layer_inp_ok):
        return LayerInputCapture(layers, info.n_embd)
    return CallbackCapture(layers, info.n_embd, architecture=info.architecture)


def capture_path(info) -> str:
    """Which capture ``make_capture(info, ...)`` picks by default, for ``led-local info``."""
    if _layer_inp_ok(info):
        return "layer-inp (patched llama.cpp)"
    return "eval-callback (stock llama.cpp)"
