"""A tiny random-weight llama GGUF and an independent numpy forward pass over the same weights.

The writer knows nothing about llama.cpp beyond the GGUF keys of the "llama" architecture; the
forward pass reimplements that architecture from the weights alone, so hidden states captured
from llama.cpp (``l_out-{il}``: output of block ``il``, shape [n_tokens, n_embd]) and its logits
can be checked against it.

Weight orientation: every linear weight ``W`` is stored as a numpy array of shape [out, in] and
applied as ``y = W @ x``; that same array is what goes into the GGUF (gguf reverses numpy's shape
into ggml's ``ne``, so llama.cpp sees ne = [in, out], which is what it expects).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPACE = "\u2581"  # SentencePiece's word-boundary marker
WORDS = (
    "the a is of and to in it answer hello world number what think step so then sum two plus"
).split()
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,?!+-=*/()"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


@dataclass
class TinyLayer:
    """Weights of one transformer block, float32, linear weights [out, in] (``y = W @ x``).

    Shapes: attn_norm, ffn_norm [n_embd]; wq [n_head*hd, n_embd]; wk, wv [n_head_kv*hd, n_embd];
    wo [n_embd, n_head*hd]; w_gate, w_up [n_ff, n_embd]; w_down [n_embd, n_ff]; hd = head dim.
    """

    attn_norm: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray


@dataclass
class TinyModel:
    """A written tiny GGUF: its path, hyper-parameters and weights (see module docstring).

    ``token_embd`` is [n_vocab, n_embd]; ``output`` is [n_vocab, n_embd], or None when ``tied``
    (the head is then ``token_embd``). ``tokens`` is the vocabulary, index = token id.
    """

    path: Path
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    rms_eps: float
    rope_theta: float
    tied: bool
    n_ctx_train: int
    token_embd: np.ndarray
    layers: list[TinyLayer]
    output_norm: np.ndarray
    output: np.ndarray | None
    tokens: list[str] = field(default_factory=list)

    @property
    def head_dim(self) -> int:
        """Per-head width, n_embd // n_head."""
        return self.n_embd // self.n_head

    @property
    def head(self) -> np.ndarray:
        """The LM head [n_vocab, n_embd]: ``output``, or ``token_embd`` when tied."""
        return self.token_embd if self.output is None else self.output


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """SPM vocabulary: <unk> <s> </s>, 256 byte tokens, ChatML markers, then text pieces.

    Every prefix of a word piece is itself a piece, because llama.cpp's SPM tokenizer only
    reaches a piece through merges of pieces already in the vocabulary. Returns (tokens,
    scores, token types) as gguf expects them.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [gguf.TokenType.CONTROL] * 2
    pieces = [SPACE, *CHARS, *(SPACE + c for c in CHARS)]
    for word in WORDS:
        pieces += [SPACE + word[:k] for k in range(2, len(word) + 1)]
    pieces = list(dict.fromkeys(pieces))
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # Merge priority: longer pieces first, so whole words win over their letters.
    scores = [0.0] * (len(tokens) - len(pieces)) + [float(len(p)) for p in pieces]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(
    path: str | Path,
    *,
    n_layer: int = 4,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 96,
    seed: int = 0,
    tied: bool = False,
    arch: str = "llama",
    chat_template: str | None = None,
) -> TinyModel:
    """Write a random-weight F32 llama GGUF (SPM tokenizer, ChatML template) to ``path``.

    ``arch`` "qwen2" adds q/k/v biases and "qwen3" q/k norms to the same weights, for checks
    that the capture works on those graphs too (``forward`` models llama only).
    ``chat_template`` replaces the ChatML template (tests of hostile templates).

    Linear weights have std 1/sqrt(in) so activations stay O(1), embeddings std 0.5,
    norm weights 1 + 0.1 * N(0, 1). With ``tied`` no output.weight is written and llama.cpp uses
    token_embd.weight as the head. Returns the model with the exact float32 weights written.
    """
    if n_embd % n_head or n_head % n_head_kv or (n_embd // n_head) % 2:
        raise ValueError(
            f"need n_embd % n_head == 0, n_head % n_head_kv == 0 and an even head dim; got "
            f"n_embd={n_embd}, n_head={n_head}, n_head_kv={n_head_kv}"
        )
    rng = np.random.default_rng(seed)
    tokens, scores, types = build_vocab()
    n_vocab, hd = len(tokens), n_embd // n_head

    def linear(n_out: int, n_in: int) -> np.ndarray:
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32)

    token_embd = (0.5 * rng.standard_normal((n_vocab, n_embd))).astype(np.float32)
    layers = [
        TinyLayer(
            attn_norm=norm(), wq=linear(n_head * hd, n_embd), wk=linear(n_head_kv * hd, n_embd),
            wv=linear(n_head_kv * hd, n_embd), wo=linear(n_embd, n_head * hd), ffn_norm=norm(),
            w_gate=linear(n_ff, n_embd), w_up=linear(n_ff, n_embd), w_down=linear(n_embd, n_ff),
        )
        for _ in range(n_layer)
    ]
    model = TinyModel(
        path=Path(path), n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        n_ff=n_ff, n_vocab=n_vocab, rms_eps=1e-5, rope_theta=10000.0, tied=tied, n_ctx_train=256,
        token_embd=token_embd, layers=layers, output_norm=norm(),
        output=None if tied else linear(n_vocab, n_embd), tokens=tokens,
    )

    w = gguf.GGUFWriter(str(model.path), arch)
    w.add_name(f"tiny-llama-{'tied' if tied else 'untied'}-s{seed}")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(model.n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(model.rms_eps)
    w.add_rope_freq_base(model.rope_theta)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(n_vocab)
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
    w.add_chat_template(CHATML_TEMPLATE if chat_template is None else chat_template)

    w.add_tensor("token_embd.weight", token_embd)
    for il, layer in enumerate(layers):
        for name, arr in (
            ("attn_norm", layer.attn_norm), ("attn_q", layer.wq), ("attn_k", layer.wk),
            ("attn_v", layer.wv), ("attn_output", layer.wo), ("ffn_norm", layer.ffn_norm),
            ("ffn_gate", layer.w_gate), ("ffn_up", layer.w_up), ("ffn_down", layer.w_down),
        ):
            w.add_tensor(f"blk.{il}.{name}.weight", arr)
        for name, n in (("attn_q", n_head * hd), ("attn_k", n_head_kv * hd),
                        ("attn_v", n_head_kv * hd)):
            if arch == "qwen2":
                w.add_tensor(f"blk.{il}.{name}.bias", (0.1 * rng.standard_normal(n)).astype("f4"))
            if arch == "qwen3" and name != "attn_v":
                w.add_tensor(f"blk.{il}.{name}_norm.weight", np.ones(hd, np.float32))
    w.add_tensor("output_norm.weight", model.output_norm)
    if model.output is not None:
        w.add_tensor("output.weight", model.output)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """llama.cpp's RMSNorm over the last axis, then the elementwise weight."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope_norm(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """RoPE of ggml's NORM mode on [n_tokens, n_heads, hd]: rotates pairs (x[2i], x[2i+1])."""
    hd = x.shape[-1]
    freqs = theta ** (-np.arange(0, hd, 2) / hd)  # [hd/2]
    ang = positions[:, None, None] * freqs  # [n_tokens, 1, hd/2]
    cos, sin = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(model: TinyModel, tokens: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Causal float64 forward pass from position 0 over ``tokens``.

    Returns (per-block outputs, logits): n_layer arrays [n_tokens, n_embd], the residual stream
    after block il (llama.cpp's ``l_out-{il}``), and logits [n_tokens, n_vocab].
    """
    ids = np.asarray(tokens, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or ids.max() >= model.n_vocab:
        raise ValueError(f"tokens must be a non-empty 1-D sequence of ids < {model.n_vocab}")
    n, hd, eps = ids.size, model.head_dim, model.rms_eps
    group = model.n_head // model.n_head_kv
    pos = np.arange(n, dtype=np.float64)
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    x = model.token_embd.astype(np.float64)[ids]
    outs: list[np.ndarray] = []
    for layer in model.layers:
        h = rms_norm(x, layer.attn_norm, eps)
        q = rope_norm((h @ layer.wq.T).reshape(n, model.n_head, hd), pos, model.rope_theta)
        k = rope_norm((h @ layer.wk.T).reshape(n, model.n_head_kv, hd), pos, model.rope_theta)
        v = (h @ layer.wv.T).reshape(n, model.n_head_kv, hd)
        # Query head j reads kv head j // group, as ggml's broadcasting mul_mat does.
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", att, v).reshape(n, model.n_head * hd) @ layer.wo.T
        h = rms_norm(x, layer.ffn_norm, eps)
        gate = h @ layer.w_gate.T
        x = x + (gate / (1.0 + np.exp(-gate)) * (h @ layer.w_up.T)) @ layer.w_down.T
        outs.append(x)
    logits = rms_norm(x, model.output_norm, eps) @ model.head.astype(np.float64).T
    return outs, logits
