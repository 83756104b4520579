"""The LM-head projection of hidden states, with the model's own (dequantized) head weights.

Memory: the head is held dequantized as float32, V x n_embd x 4 bytes: SmolLM2 (49,152 x 576)
113 MB, Gemma 3 270M (262,144 x 640) 671 MB, a 151,936 x 4,096 head (Qwen-7B class) 2.5 GB.
That is the price of projecting with BLAS at full speed; the per-step logits buffer is small
beside it (rows x d x V x 4 bytes: 8 depths of a 150k vocabulary are 4.9 MB a row).
"""

from __future__ import annotations

import numpy as np

from led_local.gguf_info import ModelInfo, read_tensors


class LMHead:
    """Projects hidden states (n, n_embd) to logits (n, V) exactly as the model's graph does
    after its last block: optional final norm, head product, output bias, logit scale and
    final soft-capping (the last three at every depth, LED.md).
    """

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        names = [info.head_tensor, "output_norm.weight"]
        names += ["output_norm.bias"] if info.norm_is_layernorm else []
        names += ["output.bias"] if info.has_output_bias else []
        t = read_tensors(info.path, names)
        self.weight = t[info.head_tensor]  # (V, n_embd) float32
        v, n = self.weight.shape
        if n != info.n_embd:
            raise ValueError(f"head {info.head_tensor} has width {n}, model {info.n_embd}")
        self.n_vocab = v
        self.norm_weight = t["output_norm.weight"]
        self.norm_bias = t.get("output_norm.bias")
        self.bias = t.get("output.bias")

    def final_norm(self, states: np.ndarray) -> np.ndarray:
        """The model's final RMSNorm (or LayerNorm when it has a bias), with its weights."""
        x = np.asarray(states, dtype=np.float32)
        eps = np.float32(self.info.norm_eps)
        if self.norm_bias is not None:
            x = x - x.mean(axis=-1, keepdims=True)
            y = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
            return y * self.norm_weight + self.norm_bias
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * self.norm_weight

    def project(self, states: np.ndarray, *, norm: bool, out: np.ndarray | None = None) -> np.ndarray:
        """Logits of hidden states (n, n_embd) -> (n, V) float32; ``norm`` applies the final norm.

        ``out`` (n, V) float32 may be given to avoid an allocation; it may be a strided view.
        """
        x = self.final_norm(states) if norm else np.asarray(states, dtype=np.float32)
        if out is None:
            out = np.empty((x.shape[0], self.n_vocab), np.float32)
        np.matmul(x, self.weight.T, out=out)
        info = self.info
        if self.bias is not None:
            out += self.bias
        if info.logit_scale != 1.0:
            if info.architecture == "granite":
                out *= np.float32(1.0 / info.logit_scale)
            else:
                out *= np.float32(info.logit_scale)
        if info.final_softcap:
            cap = np.float32(info.final_softcap)
            np.tanh(out / cap, out=out)
            out *= cap
        return out
