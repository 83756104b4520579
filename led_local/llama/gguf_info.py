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

# Architectures whose llama.cpp graph names every block's output `l_out-{il}` and whose LM head
# extras led-local knows (output bias, logit scale, final soft-capping). Others are refused
# for LED; plain sampling still works on anything llama.cpp loads.
LED_ARCHITECTURES = frozenset(
    {"llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "granite", "command-r",
     "cohere2", "mistral3"}
)
# Graphs whose final norm is a LayerNorm (mean removed) without a bias tensor; any model with
# output_norm.bias is a LayerNorm too. The rest use RMSNorm.
LAYERNORM_ARCHITECTURES = frozenset({"command-r", "cohere2"})
# Graphs that register their block inputs for llama_set_embeddings_layer_inp: stock for
# llama/qwen3/qwen3moe, added for the rest by patches/0001-layer-inp-export.patch.
LAYER_INP_ARCHITECTURES = frozenset(
    {"llama", "qwen3", "qwen3moe", "qwen2", "gemma2", "gemma3", "phi3"}
)


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a GGUF model; ``head_tensor`` is the LM head's tensor name."""

    path: Path
    name: str
    architecture: str
    n_layer: int
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

    @property
    def led_supported(self) -> bool:
        return self.architecture in LED_ARCHITECTURES

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
    n_layer = _integer(f, f"{arch}.block_count", p)
    n_embd = _integer(f, f"{arch}.embedding_length", p)
    layernorm = arch in LAYERNORM_ARCHITECTURES or "output_norm.bias" in g.tensors
    # the epsilon of the final norm's kind first, as llama.cpp's graph reads it
    keys = [f"{arch}.attention.layer_norm_rms_epsilon", f"{arch}.attention.layer_norm_epsilon"]
    eps_key = next((k for k in (keys[::-1] if layernorm else keys) if k in f), keys[0])
    eps = _number(f, eps_key, p, 1e-5)
    softcap = _number(f, f"{arch}.final_logit_softcapping", p, 0.0)
    logit_scale = _number(f, f"{arch}.logit_scale", p, 1.0)
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
        n_layer=n_layer,
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
    )


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
