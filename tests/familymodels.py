"""Tiny random-weight GGUFs of the architectures LED supports beyond llama, one writer for all.

Each family lists its metadata and its tensors with llama.cpp's names and ggml shapes (``ne``,
innermost first), as ``load_arch_tensors`` in vendor/llama.cpp/src/models/<arch>.cpp creates
them; the vocabulary and chat template are tinymodel's. Weights are random (linear weights
std 1/sqrt(in), norms 1 + 0.1 N(0, 1)), F32, so llama.cpp's own logits are the reference:
no numpy forward pass models these graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
from tinymodel import BOS_ID, CHATML_TEMPLATE, EOS_ID, UNK_ID, build_vocab

E, H, HKV, HD, FF = 64, 4, 2, 16, 96  # width, heads, KV heads, head dim, FFN width
N_EXPERT, N_USED, FF_EXP = 4, 2, 32
D_STATE, D_CONV = 16, 4

Tensors = dict[str, tuple[int, ...]]


def _attention(i: int, *, q_norm: bool = False, bias: bool = False) -> Tensors:
    t = {f"blk.{i}.attn_norm.weight": (E,), f"blk.{i}.attn_q.weight": (E, H * HD),
         f"blk.{i}.attn_k.weight": (E, HKV * HD), f"blk.{i}.attn_v.weight": (E, HKV * HD),
         f"blk.{i}.attn_output.weight": (H * HD, E)}
    if q_norm:
        t |= {f"blk.{i}.attn_q_norm.weight": (HD,), f"blk.{i}.attn_k_norm.weight": (HD,)}
    if bias:
        t |= {f"blk.{i}.attn_q.bias": (H * HD,), f"blk.{i}.attn_k.bias": (HKV * HD,),
              f"blk.{i}.attn_v.bias": (HKV * HD,)}
    return t


def _ffn(i: int, n_ff: int = FF) -> Tensors:
    return {f"blk.{i}.ffn_norm.weight": (E,), f"blk.{i}.ffn_gate.weight": (E, n_ff),
            f"blk.{i}.ffn_up.weight": (E, n_ff), f"blk.{i}.ffn_down.weight": (n_ff, E)}


def _experts(i: int) -> Tensors:
    return {f"blk.{i}.ffn_norm.weight": (E,), f"blk.{i}.ffn_gate_inp.weight": (E, N_EXPERT),
            f"blk.{i}.ffn_gate_exps.weight": (E, FF_EXP, N_EXPERT),
            f"blk.{i}.ffn_up_exps.weight": (E, FF_EXP, N_EXPERT),
            f"blk.{i}.ffn_down_exps.weight": (FF_EXP, E, N_EXPERT)}


def _llama_like(n: int, **attn) -> Tensors:
    t: Tensors = {}
    for i in range(n):
        t |= _attention(i, **attn) | _ffn(i)
    return t


def _qwen3moe(n: int) -> Tensors:
    t: Tensors = {}
    for i in range(n):
        t |= _attention(i, q_norm=True) | _experts(i)
    return t


def _seed_oss(n: int) -> Tensors:
    t = _llama_like(n)
    for i in range(n):
        t |= {f"blk.{i}.post_attention_norm.weight": (E,)}
        del t[f"blk.{i}.ffn_norm.weight"]
    return t


def _gpt_oss(n: int) -> Tensors:
    t: Tensors = {}
    for i in range(n):
        t |= _attention(i, bias=True) | _experts(i)
        del t[f"blk.{i}.ffn_norm.weight"]
        t |= {f"blk.{i}.post_attention_norm.weight": (E,), f"blk.{i}.attn_sinks.weight": (H,),
              f"blk.{i}.attn_output.bias": (E,), f"blk.{i}.ffn_gate_inp.bias": (N_EXPERT,),
              f"blk.{i}.ffn_gate_exps.bias": (FF_EXP, N_EXPERT),
              f"blk.{i}.ffn_up_exps.bias": (FF_EXP, N_EXPERT),
              f"blk.{i}.ffn_down_exps.bias": (E, N_EXPERT)}
    return t


def _glm4(n: int) -> Tensors:
    """glm4 with its last block a NextN/MTP layer (``nextn_predict_layers`` 1)."""
    t: Tensors = {}
    for i in range(n):
        t |= _attention(i, bias=True) | {
            f"blk.{i}.post_attention_norm.weight": (E,), f"blk.{i}.ffn_norm.weight": (E,),
            f"blk.{i}.ffn_up.weight": (E, 2 * FF), f"blk.{i}.ffn_down.weight": (FF, E),
            f"blk.{i}.post_ffw_norm.weight": (E,)}
    last = n - 1
    t |= {f"blk.{last}.nextn.eh_proj.weight": (2 * E, E), f"blk.{last}.nextn.enorm.weight": (E,),
          f"blk.{last}.nextn.hnorm.weight": (E,),
          f"blk.{last}.nextn.shared_head_norm.weight": (E,)}
    return t


def _mamba(n: int) -> Tensors:
    d_inner, dt_rank = 2 * E, 4
    t: Tensors = {}
    for i in range(n):
        t |= {f"blk.{i}.attn_norm.weight": (E,), f"blk.{i}.ssm_in.weight": (E, 2 * d_inner),
              f"blk.{i}.ssm_conv1d.weight": (D_CONV, d_inner),
              f"blk.{i}.ssm_conv1d.bias": (d_inner,),
              f"blk.{i}.ssm_x.weight": (d_inner, dt_rank + 2 * D_STATE),
              f"blk.{i}.ssm_dt.weight": (dt_rank, d_inner), f"blk.{i}.ssm_dt.bias": (d_inner,),
              f"blk.{i}.ssm_a": (D_STATE, d_inner), f"blk.{i}.ssm_d": (d_inner,),
              f"blk.{i}.ssm_out.weight": (d_inner, E)}
    return t


# nemotron_h's block kinds, in order: M = Mamba-2 mixer, * = attention, - = FFN (ReLU^2)
NEMOTRON_PATTERN = "M*-M-"
NEMOTRON_SSM = {"d_inner": 2 * E, "n_group": 2, "n_head": 8}


def _nemotron_h(n: int) -> Tensors:
    s = NEMOTRON_SSM
    d_inner, n_group, n_head = s["d_inner"], s["n_group"], s["n_head"]
    d_in_proj = 2 * d_inner + 2 * n_group * D_STATE + n_head
    t: Tensors = {}
    for i, kind in enumerate(NEMOTRON_PATTERN[:n]):
        t[f"blk.{i}.attn_norm.weight"] = (E,)
        if kind == "M":
            t |= {f"blk.{i}.ssm_in.weight": (E, d_in_proj),
                  f"blk.{i}.ssm_conv1d.weight": (D_CONV, d_inner + 2 * n_group * D_STATE),
                  f"blk.{i}.ssm_conv1d.bias": (d_inner + 2 * n_group * D_STATE,),
                  f"blk.{i}.ssm_dt.bias": (n_head,), f"blk.{i}.ssm_a": (1, n_head),
                  f"blk.{i}.ssm_d": (1, n_head),
                  f"blk.{i}.ssm_norm.weight": (d_inner // n_group, n_group),
                  f"blk.{i}.ssm_out.weight": (d_inner, E)}
        elif kind == "*":
            t |= {k: v for k, v in _attention(i).items() if "attn_norm" not in k}
        else:
            t |= {f"blk.{i}.ffn_up.weight": (E, FF), f"blk.{i}.ffn_down.weight": (FF, E)}
    return t


def _nemotron_keys(n: int) -> dict:
    kinds = NEMOTRON_PATTERN[:n]
    s = NEMOTRON_SSM
    return {"attention.head_count_kv": [HKV if k == "*" else 0 for k in kinds],
            "feed_forward_length": [FF if k == "-" else 0 for k in kinds],
            "ssm.conv_kernel": D_CONV, "ssm.state_size": D_STATE, "ssm.group_count": s["n_group"],
            "ssm.inner_size": s["d_inner"], "ssm.time_step_rank": s["n_head"],
            "attention.layer_norm_epsilon": 1e-5}


MOE_KEYS = {"expert_count": N_EXPERT, "expert_used_count": N_USED,
            "expert_feed_forward_length": FF_EXP}
# family -> (tensors of n blocks, extra metadata of n blocks)
FAMILIES: dict[str, tuple[Callable[[int], Tensors], Callable[[int], dict]]] = {
    "qwen3moe": (_qwen3moe, lambda n: dict(MOE_KEYS)),
    "smollm3": (_llama_like, lambda n: {}),
    "seed_oss": (_seed_oss, lambda n: {}),
    "gpt-oss": (_gpt_oss, lambda n: MOE_KEYS | {"attention.sliding_window": 8}),
    "glm4": (_glm4, lambda n: {"nextn_predict_layers": 1}),
    "mamba": (_mamba, lambda n: {"ssm.conv_kernel": D_CONV, "ssm.inner_size": 2 * E,
                                 "ssm.state_size": D_STATE, "ssm.time_step_rank": 4,
                                 "attention.head_count": 0, "attention.head_count_kv": 0}),
    "nemotron_h": (_nemotron_h, _nemotron_keys),
}


def _add(w: gguf.GGUFWriter, arch: str, key: str, value) -> None:
    name = f"{arch}.{key}"
    if isinstance(value, list):
        w.add_array(name, value)
    elif isinstance(value, float):
        w.add_float32(name, value)
    else:
        w.add_uint32(name, value)


def write_family(path: str | Path, arch: str, *, n_layer: int = 4, seed: int = 0,
                 keys: dict | None = None) -> Path:
    """Write a tiny ``arch`` GGUF of ``n_layer`` blocks (NextN layers included) to ``path``;
    ``keys`` override or add metadata (``{arch}.`` prefixed)."""
    tensors, extra = FAMILIES[arch]
    rng = np.random.default_rng(seed)
    tokens, scores, types = build_vocab()
    meta = {"context_length": 256, "embedding_length": E, "block_count": n_layer,
            "feed_forward_length": FF, "attention.head_count": H,
            "attention.head_count_kv": HKV, "attention.layer_norm_rms_epsilon": 1e-5,
            "rope.freq_base": 10000.0, "rope.dimension_count": HD, "attention.key_length": HD,
            "attention.value_length": HD, "vocab_size": len(tokens)}
    meta |= extra(n_layer) | (keys or {})
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}-s{seed}")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, value in meta.items():
        _add(w, arch, key, value)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_eot_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)
    shapes = {"token_embd.weight": (E, len(tokens)), "output_norm.weight": (E,),
              "output.weight": (E, len(tokens))} | tensors(n_layer)
    for name, ne in shapes.items():
        shape = tuple(reversed(ne))  # numpy order
        if len(ne) == 1 and "norm" in name:
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".ssm_a"):  # A = -exp(A_log): negative, so the state decays
            arr = -np.exp(0.5 * rng.standard_normal(shape))
        elif len(ne) == 1 or name.endswith((".ssm_d", ".bias", "attn_sinks.weight")):
            arr = 0.1 * rng.standard_normal(shape)
        else:
            scale = 0.5 if name == "token_embd.weight" else 1.0 / np.sqrt(ne[0])
            arr = scale * rng.standard_normal(shape)
        w.add_tensor(name, arr.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
