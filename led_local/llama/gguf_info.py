"""What a GGUF file says about its model, read with ``gguf`` before llama.cpp ever sees it.

Validation happens here so that a missing, empty, foreign or truncated file becomes a one-line
LedError instead of a crash inside llama.cpp.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType

from led_local.errors import LedError, UnsupportedModelError
from led_local.llama.gguf_file import ArrayInfo, GGUFFile, damaged

GGUF_MAGIC = b"GGUF"

# Architectures whose llama.cpp graph names every block's residual-stream output (``l_out-{il}``
# via ``cb(cur, "l_out", il)``, or the name in BLOCK_OUTPUTS) and whose final norm and LM head
# extras led-local knows (output bias, logit scale, final soft-capping), each checked in
# vendor/llama.cpp/src/models/*.cpp (docs/architecture.md has the table). Others are refused
# for LED; plain sampling still works on anything llama.cpp loads.
LED_ARCHITECTURES = frozenset(
    {"llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "granite", "command-r",
     "cohere2", "mistral3",
     "gpt-oss", "smollm3", "seed_oss", "deepseek2", "glm4", "glm4moe", "qwen35", "qwen35moe",
     "qwen3next", "granitemoe", "granitehybrid", "lfm2", "exaone4", "olmo2", "minimax-m2",
     "ernie4_5-moe", "hunyuan-moe", "falcon-h1", "jamba", "mamba", "nemotron_h"}
)
# Graphs whose block output has another name: nemotron_h's ``l_out`` is the block's mixer or
# FFN branch before the residual add (src/models/nemotron-h.cpp).
BLOCK_OUTPUTS = {"nemotron_h": "nemotron_h_block_out"}
# The final norm's weight where it is not output_norm.weight (lfm2: LLM_TENSOR_OUTPUT_NORM_LFM2)
NORM_TENSORS = {"lfm2": "token_embd_norm.weight"}
# Graphs whose final norm is a LayerNorm (mean removed) without a bias tensor; any model with
# output_norm.bias is a LayerNorm too. The rest use RMSNorm.
LAYERNORM_ARCHITECTURES = frozenset({"command-r", "cohere2"})
# What the graph does with ``<arch>.logit_scale`` after the head: granite's divide, command-r's
# multiply; other graphs ignore the key, and so does led-local.
LOGIT_SCALE_DIVIDES = frozenset({"granite", "granitemoe", "granitehybrid"})
LOGIT_SCALE_MULTIPLIES = frozenset({"command-r", "cohere2"})
# Graphs that soft-cap the final logits with ``<arch>.final_logit_softcapping``
SOFTCAP_ARCHITECTURES = frozenset({"gemma2", "gemma3"})
# Graphs that register their block inputs for llama_set_embeddings_layer_inp: stock for
# llama/qwen3/qwen3moe and the newer graphs listed last, added for qwen2, gemma2, gemma3 and
# phi3 by patches/0001-layer-inp-export.patch.
LAYER_INP_ARCHITECTURES = frozenset(
    {"llama", "qwen3", "qwen3moe", "qwen2", "gemma2", "gemma3", "phi3",
     "gpt-oss", "minimax-m2", "qwen35", "qwen35moe", "qwen3next", "lfm2", "nemotron_h"}
)
# Where patches/0002-led-depth-logits.patch computes the depth logits right: the graph
# registers its block inputs (stock or patched) and build_led applies its head's extras (it
# scales for granite, command-r and cohere2 only, so granitemoe/granitehybrid stay on host).
# Of the newer graphs only those tested on a generated tiny model are claimed.
GRAPH_ARCHITECTURES = frozenset(
    {"llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "granite", "command-r",
     "cohere2", "mistral3", "gpt-oss", "nemotron_h"}
)
# Architectures whose memory is recurrent (Mamba-style state) or hybrid (recurrent and
# attention layers), as llama.cpp's llama_model_is_recurrent / llama_model_is_hybrid say:
# their state cannot be partially erased, so a cached prompt is only reused when the new one
# extends it (``Engine``).
RECURRENT_ARCHITECTURES = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7",
                                     "arwkv7"})
HYBRID_ARCHITECTURES = frozenset({"jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2",
                                  "lfm2moe", "nemotron_h", "nemotron_h_moe", "qwen3next",
                                  "qwen35", "qwen35moe", "kimi-linear"})
LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS = 512, 1024  # llama-hparams.h


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a GGUF model; ``head_tensor`` is the LM head's tensor name."""

    path: Path
    name: str
    architecture: str
    n_layer: int  # the trunk's blocks: block_count less the NextN/MTP layers counted in it
    n_embd: int
    n_vocab: int
    head_tensor: str
    head_type: str
    tied: bool
    chat_template: str | None
    norm_eps: float
    final_softcap: float  # 0 = none
    logit_scale: float  # 1 = none; granite divides by it, command-r/cohere2 multiply
    has_output_bias: bool
    norm_is_layernorm: bool
    # the parsed file, kept so that nothing parses it again (its map holds the head's bytes)
    gguf: GGUFFile = field(repr=False, compare=False)
    # template variables every render passes (the thinking switches: ``switches``)
    chat_vars: dict = field(default_factory=dict, compare=False)
    n_nextn: int = 0  # NextN/MTP layers after the trunk (``<arch>.nextn_predict_layers``)
    norm_tensor: str = "output_norm.weight"  # the final norm's weight

    @property
    def block_output(self) -> str:
        """The graph's name of a block's residual-stream output (``l_out``, or nemotron_h's)."""
        return BLOCK_OUTPUTS.get(self.architecture, "l_out")

    @property
    def memory(self) -> str:
        """``attention``, ``recurrent`` or ``hybrid``: the kind of llama.cpp memory it gets."""
        if self.architecture in RECURRENT_ARCHITECTURES:
            return "recurrent"
        return "hybrid" if self.architecture in HYBRID_ARCHITECTURES else "attention"

    @property
    def led_supported(self) -> bool:
        return self.architecture in LED_ARCHITECTURES

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes one token takes in llama.cpp's default (f16) KV cache: every layer's K and V
        rows, as wide as its ``attn_k`` and ``attn_v`` projections; a model whose layers have
        neither (fused QKV, a compressed cache) is counted at 2 x n_embd a layer, more than
        its cache holds."""
        t = self.gguf.tensors
        width = sum(t[f"blk.{il}.attn_{kv}.weight"].shape[0]
                    for il in range(self.n_layer) for kv in "kv"
                    if f"blk.{il}.attn_{kv}.weight" in t)
        return 2 * (width or 2 * self.n_embd * self.n_layer)

    def check_led(self, depths: int) -> None:
        """Refuse LED on an unknown graph or with a depth count the model cannot give."""
        if not self.led_supported:
            raise UnsupportedModelError(
                f"architecture '{self.architecture}' is not supported for LED "
                f"(supported: {', '.join(sorted(LED_ARCHITECTURES))}); use `method` sample"
            )
        if not 2 <= depths < self.n_layer:
            raise LedError(
                f"`led_depths` must be between 2 and {self.n_layer - 1} "
                f"(the model has {self.n_layer} blocks), got {depths}"
            )

    def led_hidden_indices(self, depths: int) -> list[int]:
        """Hidden-state indices (Hugging Face numbering) of LED depths 1..d-1: L-2, ..., L-d,
        i.e. the outputs l_out-(L-3), ..., l_out-(L-1-d) (LED.md)."""
        return [self.n_layer - 1 - j for j in range(1, depths)]

    def dola_hidden_indices(self, layers: str) -> list[int]:
        """DoLa's candidate premature layers for ``low``/``high``, as transformers picks them
        (hidden_states indices; layer 0 skipped for tied embeddings on deep enough models)."""
        final = self.n_layer
        start = 0 if not self.tied else (2 if final > 2 else (1 if final == 2 else 0))
        if layers == "low":
            if start == final // 2:
                return [start]
            return list(range(start, final // 2, 2)) if final <= 40 else list(range(start, 20, 2))
        if final <= 40:
            return list(range(final // 2, final, 2))
        return list(range(final - 20, final, 2))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise LedError(f"model file not found: {path}")
    if path.is_dir():
        raise LedError(f"model path is a directory, not a GGUF file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise LedError(f"model file is empty: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise LedError(f"not a GGUF file (bad magic {magic!r}): {path}")


def model_info(model: str | os.PathLike | ModelInfo) -> ModelInfo:
    """``model`` itself when it was read already, else ``inspect_model(model)``: a command
    reads each model file's metadata once and hands the ModelInfo down."""
    return model if isinstance(model, ModelInfo) else inspect_model(model)


def inspect_model(path: str | os.PathLike) -> ModelInfo:
    """Read and validate a GGUF file's metadata and tensor table.

    Raises LedError naming the problem for a missing, empty, non-GGUF or truncated file.
    """
    p = Path(path)
    _check_file(p)
    g = GGUFFile(p)
    for t in g.tensors.values():
        if t.offset + t.n_bytes > g.size:
            raise LedError(f"truncated GGUF file: tensor {t.name} runs past the end of {p}")
    f = g.fields
    arch = f.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise LedError(f"GGUF file has no general.architecture: {p}")
    if f.get(f"{arch}.block_count") is None or f.get(f"{arch}.embedding_length") is None:
        raise UnsupportedModelError(f"architecture '{arch}' has no block_count/embedding_length")
    n_block = _integer(f, f"{arch}.block_count", p)
    n_embd = _integer(f, f"{arch}.embedding_length", p)
    n_nextn = check_hparams(f, arch, p, n_block=n_block, n_embd=n_embd)
    layernorm = arch in LAYERNORM_ARCHITECTURES or "output_norm.bias" in g.tensors
    # the epsilon of the final norm's kind first, as llama.cpp's graph reads it
    keys = [f"{arch}.attention.layer_norm_rms_epsilon", f"{arch}.attention.layer_norm_epsilon"]
    eps_key = next((k for k in (keys[::-1] if layernorm else keys) if k in f), keys[0])
    eps = _number(f, eps_key, p, 1e-5)
    # read (a damaged value is refused whatever the graph), applied only where the graph
    # applies it: any other graph ignores these keys
    softcap = _number(f, f"{arch}.final_logit_softcapping", p, 0.0)
    softcap = softcap if arch in SOFTCAP_ARCHITECTURES else 0.0
    logit_scale = _number(f, f"{arch}.logit_scale", p, 1.0)
    logit_scale = logit_scale if arch in LOGIT_SCALE_DIVIDES | LOGIT_SCALE_MULTIPLIES else 1.0
    head_name = "output.weight" if "output.weight" in g.tensors else "token_embd.weight"
    if head_name not in g.tensors:
        raise UnsupportedModelError(f"no LM head (output.weight or token_embd.weight) in {p}")
    head = g.tensors[head_name]
    tokens = f.get("tokenizer.ggml.tokens")
    n_vocab = tokens.count if isinstance(tokens, ArrayInfo) else int(head.shape[0])
    template = f.get("tokenizer.chat_template")
    return ModelInfo(
        path=p,
        name=str(f.get("general.name", p.stem)),
        architecture=arch,
        n_layer=n_block - n_nextn,
        n_embd=n_embd,
        n_vocab=n_vocab,
        head_tensor=head_name,
        head_type=GGMLQuantizationType(head.ggml_type).name,
        tied=head_name == "token_embd.weight",
        chat_template=template if isinstance(template, str) else None,
        norm_eps=eps,
        final_softcap=softcap,
        logit_scale=logit_scale or 1.0,
        has_output_bias="output.bias" in g.tensors,
        norm_is_layernorm=layernorm,
        gguf=g,
        n_nextn=n_nextn,
        norm_tensor=NORM_TENSORS.get(arch, "output_norm.weight"),
    )


def check_hparams(f: dict, arch: str, path: Path, *, n_block: int, n_embd: int) -> int:
    """Refuse hyperparameters that would trip a ggml assert inside llama.cpp (exit 134), as
    one "damaged GGUF" line naming the key; returns the NextN/MTP layer count.

    Checked where the file says them: block and NextN counts, experts against experts used,
    head counts (scalars or per-layer arrays) against KV heads and the width, head dims
    against the rotary dims.
    """
    k = f"{arch}."
    if n_block > LLAMA_MAX_LAYERS:
        raise damaged(path, f"key {k + 'block_count'!r} is {n_block}, more than llama.cpp's "
                      f"{LLAMA_MAX_LAYERS}")
    n_nextn = _count(f, k + "nextn_predict_layers", path)
    if n_nextn >= n_block:
        raise damaged(path, f"key {k + 'nextn_predict_layers'!r} is {n_nextn}: it must be "
                      f"fewer than the {n_block} blocks of {k + 'block_count'!r}")
    experts = _count(f, k + "expert_count", path)
    used = _per_layer(f, k + "expert_used_count", path, n_block)
    if experts > LLAMA_MAX_EXPERTS:
        raise damaged(path, f"key {k + 'expert_count'!r} is {experts}, more than llama.cpp's "
                      f"{LLAMA_MAX_EXPERTS}")
    if used is not None and max(used) > experts:
        raise damaged(path, f"key {k + 'expert_used_count'!r} is {max(used)}, more than the "
                      f"{experts} experts of {k + 'expert_count'!r}")
    if experts and used is not None and max(used) == 0:
        raise damaged(path, f"key {k + 'expert_used_count'!r} must be at least 1 with "
                      f"{experts} experts")
    heads = _per_layer(f, k + "attention.head_count", path, n_block)
    kv = _per_layer(f, k + "attention.head_count_kv", path, n_block)
    if heads is None:
        return n_nextn
    if kv is not None:
        for il, (h, g) in enumerate(zip(heads, kv)):
            if h and g and h % g:
                raise damaged(path, f"key {k + 'attention.head_count_kv'!r} ({g}) must divide "
                              f"{k + 'attention.head_count'!r} ({h}) (layer {il})")
    h_max = max(heads)
    key_dim = _count(f, k + "attention.key_length", path)
    if h_max and not key_dim and n_embd % h_max:
        raise damaged(path, f"key {k + 'embedding_length'!r} ({n_embd}) must be a multiple of "
                      f"{k + 'attention.head_count'!r} ({h_max}) without "
                      f"{k + 'attention.key_length'!r}")
    head_dim = key_dim or (n_embd // h_max if h_max else 0)
    rot = _count(f, k + "rope.dimension_count", path)
    if head_dim and rot > head_dim:
        raise damaged(path, f"key {k + 'rope.dimension_count'!r} ({rot}) exceeds the head "
                      f"dimension ({head_dim})")
    if rot % 2:
        raise damaged(path, f"key {k + 'rope.dimension_count'!r} must be even, got {rot}")
    return n_nextn


def _count(fields: dict, key: str, path: Path) -> int:
    """A non-negative integer metadata value (0 when absent), or a "damaged GGUF" error."""
    value = fields.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise damaged(path, f"key {key!r} must be a non-negative integer, got {_show(value)}")
    return value


def _per_layer(fields: dict, key: str, path: Path, n_block: int) -> list[int] | None:
    """A count given once or per layer (llama.cpp's get_key_or_arr), as one value per layer;
    None when absent or too long an array to read (llama.cpp checks those itself)."""
    value = fields.get(key)
    if value is None or isinstance(value, ArrayInfo):
        return None
    if isinstance(value, list):
        if len(value) != n_block or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise damaged(path, f"key {key!r} must be a count or one count per block "
                          f"({n_block}), got {_show(value)}")
        return value
    return [_count(fields, key, path)] * n_block


def _integer(fields: dict, key: str, path: Path) -> int:
    """A positive integer metadata value, or a one-line "damaged GGUF" error naming ``key``."""
    value = fields.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise damaged(path, f"key {key!r} must be a positive integer, got {_show(value)}")
    return value


def _number(fields: dict, key: str, path: Path, default: float) -> float:
    """A finite, non-negative number (``default`` when absent), or a "damaged GGUF" error."""
    value = fields.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0:
        raise damaged(path, f"key {key!r} must be a non-negative number, got {_show(value)}")
    return float(value)


def _show(value: object) -> str:
    if isinstance(value, ArrayInfo):
        return f"an array of {value.count}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_tensors(g: GGUFFile, names: list[str]) -> dict[str, np.ndarray]:
    """Small tensors of the file (norms, biases) dequantized to float32, numpy shape =
    reversed ggml ne. The LM head itself never passes here: ``head`` uses it as stored."""
    from gguf.quants import dequantize

    out = {}
    for name in names:
        if name not in g.tensors:
            raise LedError(f"tensor {name} not found in {g.path}")
        t = g.tensors[name]
        raw = g.tensor_bytes(name).reshape(t.shape[:-1] + (-1,))
        arr = dequantize(raw, GGMLQuantizationType(t.ggml_type))
        out[name] = np.ascontiguousarray(arr, dtype=np.float32).reshape(t.shape)
    return out
