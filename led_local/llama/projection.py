"""Where LED's depth logits are computed: on the host or inside llama.cpp's graph.

- ``host`` (any build): hidden states leave llama.cpp (``capture``) and ``head.LMHead``
  projects them with ggml's CPU kernels, only for the rows that explore.
- ``graph`` (patches/0002-led-depth-logits.patch): llama.cpp projects the selected layer inputs
  of every output row through the model's LM head in the decode's own graph, on the backend
  that holds the head (the GPU when the model is offloaded), and hands back only what LED
  consumes: for each depth, the logits and probabilities at the final layer's top K tokens
  (K = k + ``CANDIDATE_MARGIN``) and at the depth's own argmax, from which the depth's
  log-normaliser follows. With ``candidates=None`` (DoLa, diagnostics) it keeps the full logits.
- ``auto``: graph when the build has it and the model is offloaded to a GPU, host otherwise
  (on a CPU the host path is cheaper: it projects only the rows that explore).

Both undo the 8-bit rounding that the head's product applies to the states (``activations``):
the host for every head type, the graph where the backend's rounding is Q8_0's grid (the CPU
product of Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL and MXFP4 heads; CUDA's quantized products),
F16 or BF16, through ``ggml_cast``. A CPU graph with a K-quant or I-quant head (rounded to
Q8_K, which ggml cannot cast back) keeps the rounding: ``depth_precision`` says so.
"""

from __future__ import annotations

import llama_cpp
import numpy as np

from led_local.errors import LedError
from led_local.llama import native
from led_local.llama.activations import ActivationSplit
from led_local.llama.gguf_info import GRAPH_ARCHITECTURES, ModelInfo

PROJECTIONS = ("auto", "host", "graph")
# extra candidates the graph returns beyond k, so that ties at the k-th largest final logit
# still contain the host's choice (the lowest ids among equal values)
CANDIDATE_MARGIN = 8


def graph_available() -> bool:
    """Whether the loaded llama.cpp carries the in-graph projection patch."""
    return native.projection_patch_version() is not None


def offloaded() -> bool:
    """Whether the model runs on a GPU: the build has a GPU backend with a device (led-local
    always offloads every layer then)."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def graph_supports(info: ModelInfo | None) -> bool:
    """Whether the patch's in-graph projection is right for this architecture (None: any)."""
    return info is None or info.architecture in GRAPH_ARCHITECTURES


def resolve_projection(prefer: str = "auto", info: ModelInfo | None = None,
                       refusal: str | None = None) -> str:
    """``host`` or ``graph`` for the choice ``prefer`` (auto, host or graph) and the model
    ``info`` (auto stays on the host for an architecture the graph path does not handle);
    ``refusal``: why the graph path cannot serve the method (auto then picks the host)."""
    if prefer not in PROJECTIONS:
        raise LedError(f"`projection` must be one of {', '.join(PROJECTIONS)}, got {prefer!r}")
    if prefer == "graph" and not graph_available():
        raise LedError("`projection` graph needs led-local's patched llama.cpp with "
                       "patches/0002-led-depth-logits.patch: run make install")
    if prefer == "graph" and not graph_supports(info):
        raise LedError(f"`projection` graph does not handle architecture "
                       f"'{info.architecture}' (its graph does not register its block inputs "
                       "or its head's extras are not in the patch): use `projection` host")
    if prefer == "graph" and refusal is not None:
        raise LedError(f"`projection` graph {refusal}: use `projection` host")
    if prefer == "auto":
        return "graph" if (graph_available() and offloaded() and graph_supports(info)
                           and refusal is None) else "host"
    return prefer


def graph_round_type(info: ModelInfo) -> int | None:
    """The ggml type whose rounding of the states the in-graph projection undoes (None: none,
    for an F32 head, or a K-quant or I-quant head on the CPU)."""
    head = info.gguf.tensors[info.head_tensor].ggml_type
    if head == native.GGML_TYPE_F32:
        return None
    if offloaded():  # CUDA converts activations to q8_1 blocks (Q8_0's grid) or to F16/BF16
        return head if head in (native.GGML_TYPE_F16, native.GGML_TYPE_BF16) \
            else native.GGML_TYPE_Q8_0
    vec = native.cpu_vec_dot_type(head)
    if vec in (native.GGML_TYPE_Q8_0, native.GGML_TYPE_Q8_1):
        return native.GGML_TYPE_Q8_0  # the same grid: Q8_1 adds only each block's sum
    return vec if vec in (native.GGML_TYPE_F16, native.GGML_TYPE_BF16) else None


def depth_logits(info: ModelInfo, path: str) -> str:
    """``exact`` when projection ``path`` (host or graph) undoes the head product's 8-bit
    rounding of the states for this model's head (or the head rounds nothing), else
    ``8-bit``: what run fingerprints record, since the two give different tokens."""
    head = info.gguf.tensors[info.head_tensor].ggml_type
    if head == native.GGML_TYPE_F32:
        return "exact"
    if path == "graph":
        return "exact" if graph_round_type(info) is not None else "8-bit"
    return "exact" if ActivationSplit(head).known else "8-bit"


def depth_precision(info: ModelInfo) -> str:
    """How exactly ``--projection auto`` computes the depth logits, for ``info``."""
    if depth_logits(info, resolve_projection("auto", info)) == "8-bit":
        return "8-bit states (the in-graph product's rounding is kept for this head type)"
    if info.gguf.tensors[info.head_tensor].ggml_type == native.GGML_TYPE_F32:
        return "exact (F32 head)"
    return ("exact (the states and what the head product's rounding of them leaves, "
            "projected together)")


def projection_path(info: ModelInfo | None = None) -> str:
    """Which projection ``--projection auto`` uses, with the reason, for ``info`` and ``doctor``."""
    if not graph_available():
        return "host (this llama.cpp lacks the in-graph projection patch)"
    if not graph_supports(info):
        return f"host (the in-graph projection does not handle '{info.architecture}')"
    if not offloaded():
        return "host (CPU build; graph available with --projection graph)"
    return "graph (patched llama.cpp, model offloaded to the GPU)"


class GraphProjection:
    """LED's depth logits from llama.cpp's graph for one runtime.

    layers: layer-input (hidden-state) indices of depths 1..d-1, in order; norm: final norm
    first; temperature: T of the returned log-probabilities (0: no division);
    candidates: LED's k, or None to keep the full (rows, len(layers), V) logits.
    """

    path = "graph"

    def __init__(self, info: ModelInfo, layers: list[int], *, norm: bool, temperature: float,
                 candidates: int | None) -> None:
        self.round_type = graph_round_type(info)
        self.layers = list(layers)
        self.norm = norm
        self.scale = 1.0 / temperature if temperature > 0 else 1.0
        self.n_vocab = info.n_vocab
        self.top_k = 0 if candidates is None else min(candidates + CANDIDATE_MARGIN, info.n_vocab)
        self._ctx = None
        self._on: bool | None = None

    def attach(self, runtime) -> None:
        """Use ``runtime``'s context; the projection starts switched on."""
        self._ctx = runtime.ctx
        self._on = None
        self.enable(True)

    def enable(self, on: bool) -> None:
        """Switch the projection on or off for the next decodes (a change rebuilds the graph)."""
        if on == self._on:
            return
        native.led_set_projection(self._ctx, self.layers if on else [], norm=self.norm,
                                  scale=self.scale, top_k=self.top_k,
                                  round_type=self.round_type)
        self._on = on

    def _values(self, row: int, n: int) -> np.ndarray:
        ptr = native.led_values(self._ctx, row)
        if not ptr:
            raise RuntimeError(f"llama.cpp has no in-graph projection for batch row {row}")
        return np.ctypeslib.as_array(ptr, shape=(n,))

    def logits(self, row: int) -> np.ndarray:
        """Full depth logits (len(layers), V) float32 of batch row ``row`` (candidates=None)."""
        n_l = len(self.layers)
        return self._values(row, n_l * self.n_vocab).reshape(n_l, self.n_vocab).copy()

    def logprobs(self, row: int, candidates: np.ndarray,
                 final: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log P_j at LED's candidates for depths 1..d-1 of batch row ``row``.

        candidates: (k,) ids chosen from ``final`` (V,) logits. Returns the candidates used and
        (d-1, k) float64. They are ``candidates`` unless a tie at the k-th final logit spans
        more than the margin and the graph's top K lacks one of them; then the k best of the
        graph's top K (ties by lower id) stand in, an equally valid top-k of the final layer.
        """
        n_l, k_graph = len(self.layers), self.top_k
        vals = self._values(row, 2 * n_l * (k_graph + n_l)).reshape(k_graph + n_l, 2 * n_l)
        ids_ptr = native.led_candidates(self._ctx, row)
        if not ids_ptr:
            raise RuntimeError(f"llama.cpp has no in-graph candidates for batch row {row}")
        ids = np.ctypeslib.as_array(ids_ptr, shape=(k_graph,)).astype(np.int64)
        slot = {int(t): s for s, t in enumerate(ids)}
        if not all(int(c) in slot for c in candidates):
            order = np.lexsort((ids, -final[ids]))[: len(candidates)]
            candidates = ids[order]
        cols = np.array([slot[int(c)] for c in candidates])
        z = vals[:, :n_l].astype(np.float64)  # (K + n_l, n_l) logits
        p = vals[:, n_l:].astype(np.float64)  # the same entries' probabilities
        depth = np.arange(n_l)
        z_max, p_max = z[k_graph + depth, depth], p[k_graph + depth, depth]
        # log P_j[c] = (z_c - z_max) / T - log sum exp((z - z_max) / T), and that sum is 1 / p_max
        out = (z[cols].T - z_max[:, None]) * self.scale + np.log(p_max)[:, None]
        return candidates, out
