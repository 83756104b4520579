"""Tiny llama GGUFs that say a fixed text, with a real model family's vocabulary and chat
template: reasoning formats checked exactly without the family's weights.

The vocabulary is read from one of llama.cpp's vocabulary-only GGUFs (``models/ggml-vocab-*``
in the sources we build), with the family's special tokens put in the place of unused
``[PAD...]`` (or Llama 3's reserved) entries where it lacks them; the template is one of llama.cpp's
``models/templates``. The weights make the model a bigram machine: every block but the first
is the identity, the first block's feed-forward is off, and its attention (RoPE made
negligible by a huge base) only serves ``gates``; the LM head maps each token of the script
to its successor with a margin of hundreds of logits, so greedy decoding, sampling and LED
(every depth holds the same state) all say the script. A gate ``(query, key, successor)``
lets ``query`` attend to an earlier ``key`` and then say ``successor`` instead of its bigram
successor, for scripts that use a token twice (gpt-oss's ``<|channel|>``).

Building takes two passes: the file is written once with the vocabulary, so llama.cpp's own
tokenizer can cut the prompt and the script into tokens, then again with the weights.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

LLAMA_CPP = Path(__file__).resolve().parents[1] / "build" / "llama_cpp_python-0.3.36" / \
    "vendor" / "llama.cpp"
VOCABS = LLAMA_CPP / "models"
TEMPLATES = LLAMA_CPP / "models" / "templates"
N_EMBD, N_LAYER, N_HEAD = 64, 9, 4
CHAIN = 100.0  # head weight of a successor (logit ~ sqrt(n_embd) * CHAIN)
GATE = 400.0


@dataclass
class Scripted:
    """A written scripted model: its path, the script's token ids, the prompt's."""

    path: Path
    prompt_tokens: list[int]
    script_tokens: list[int]


@functools.lru_cache(maxsize=4)
def _read_vocab(name: str) -> dict:
    """The tokenizer.ggml.* keys of a vocabulary GGUF (a small reader: gguf's own takes
    ~10 s on 150k tokens)."""
    data = (VOCABS / f"ggml-vocab-{name}.gguf").read_bytes()
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
              12: "d"}
    pos = 24  # magic, version, tensor count, kv count
    n_kv = struct.unpack_from("<Q", data, 16)[0]

    def string() -> str:
        nonlocal pos
        n = struct.unpack_from("<Q", data, pos)[0]
        pos += 8 + n
        return data[pos - n:pos].decode("utf-8")

    def value(kind: int):
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            elem, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if elem == 8:
                return [string() for _ in range(n)]
            fmt = scalar[elem]
            out = list(struct.unpack_from(f"<{n}{fmt}", data, pos))
            pos += n * struct.calcsize(fmt)
            return out
        fmt = scalar[kind]
        (out,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize(fmt)
        return out

    fields = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", data, pos)
        pos += 4
        fields[key] = value(kind)
    return {k: fields.get(f"tokenizer.ggml.{k}") for k in
            ("model", "pre", "tokens", "token_type", "merges", "scores", "bos_token_id",
             "eos_token_id", "add_bos_token")}


def _with_specials(vocab: dict, specials: dict[str, int]) -> dict:
    """``specials`` (text -> gguf token type) added in the place of unused entries."""
    tokens, types = list(vocab["tokens"]), list(vocab["token_type"])
    pads = [i for i, t in enumerate(tokens)
            if t.startswith("[PAD") or t.startswith("<|reserved_special_token_")]
    for text, kind in specials.items():
        if text in tokens:
            types[tokens.index(text)] = kind
            continue
        i = pads.pop(0)
        tokens[i], types[i] = text, kind
    return {**vocab, "tokens": tokens, "token_type": types}


def _write(path: Path, vocab: dict, template: str, eog: list[int], weights: dict | None,
           arch: str = "llama") -> None:
    n_vocab = len(vocab["tokens"])
    hd = N_EMBD // N_HEAD
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(path.stem)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(4096)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_EMBD)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e12)  # rotations of 1e-12 rad per position: no RoPE to speak of
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model(vocab["model"])
    if vocab["pre"]:
        w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["token_type"])
    if vocab["scores"]:
        w.add_token_scores([float(s) for s in vocab["scores"]])
    if vocab["merges"]:
        w.add_token_merges(vocab["merges"])
    if vocab["bos_token_id"] is not None:
        w.add_bos_token_id(vocab["bos_token_id"])
    w.add_eos_token_id(eog[0])
    if len(eog) > 1:
        w.add_eot_token_id(eog[1])
    w.add_add_bos_token(bool(vocab.get("add_bos_token")))
    w.add_chat_template(template)
    wt = weights or {}
    zeros = np.zeros((N_EMBD, N_EMBD), np.float32)
    w.add_tensor("token_embd.weight", wt.get("embd", np.zeros((n_vocab, N_EMBD), np.float16)))
    for il in range(N_LAYER):
        ones = np.ones(N_EMBD, np.float32)
        w.add_tensor(f"blk.{il}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{il}.{name}.weight", wt.get((il, name), zeros))
        w.add_tensor(f"blk.{il}.ffn_norm.weight", ones)
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            w.add_tensor(f"blk.{il}.{name}.weight", zeros)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output.weight", wt.get("head", np.zeros((n_vocab, N_EMBD), np.float16)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_scripted(path: str | Path, *, vocab: str, template: str, script: str,
                   end: str, specials: dict[str, int] | None = None,
                   messages: list[dict] | None = None, variables: dict | None = None,
                   also: dict[str, str] | None = None,
                   gates: tuple[tuple[str, str, str], ...] = (),
                   eot: str | None = None) -> Scripted:
    """Write a model of the ``vocab`` vocabulary and the ``template`` template (file names in
    llama.cpp's models/ and models/templates/) that answers the rendered ``messages`` (default:
    one user message; ``variables``: the template's, default thinking on) with ``script`` and
    then ``end`` (an end-of-generation token's text).

    ``also``: more prompt endings (text) -> the text said after them (a prompt rendered with
    thinking off, say). ``gates``: (query, key, successor) texts of single tokens, see the
    module docstring. ``eot``: another end-of-generation token's text (``<|im_end|>``)."""
    path = Path(path)
    text = (TEMPLATES / template).read_text() if template.endswith(".jinja") else template
    v = _with_specials(_read_vocab(vocab), specials or {})
    eog_texts = [end] + ([eot] if eot else [])
    eog = [v["tokens"].index(t) for t in eog_texts]
    _write(path, v, text, eog, None)
    from led_local.llama.runtime import Runtime

    with Runtime(path, vocab_only=True) as rt:
        if variables is None:  # as led-local renders it: thinking on where it has a switch
            from led_local.decoding.switches import chat_variables

            variables = chat_variables(text)
        return _weights(path, rt, v, text, eog, script,
                        messages or [{"role": "user", "content": "What is 2 + 2?"}],
                        variables, also or {}, gates)


def _weights(path, rt, v, text, eog, script, msgs, variables, also, gates) -> Scripted:
    def _tokenize(_path, said: str) -> list[int]:
        return rt.tokenize(said, special=True, bos=False)

    def _single(_path, said: str) -> int:
        ids = _tokenize(_path, said)
        if len(ids) != 1:
            raise ValueError(f"{said!r} is {len(ids)} tokens, a gate needs one")
        return ids[0]

    prompt_tokens = _tokenize(path, rt.apply_chat_template(msgs, variables))
    n_vocab = len(v["tokens"])
    succ: dict[int, int] = {}
    chains = [(prompt_tokens[-1:], script)] + [
        (_tokenize(path, ending)[-1:], said) for ending, said in also.items()]
    gate_ids = [tuple(_single(path, t) for t in g) for g in gates]
    overridden = {(q, s) for q, _, s in gate_ids}
    for _, k, _ in gate_ids:
        if k in prompt_tokens:
            raise ValueError(f"a gate's key {v['tokens'][k]!r} is in the prompt already")
    script_tokens: list[int] = []
    for start, said in chains:
        ids = _tokenize(path, said) + [eog[0]]
        if start == prompt_tokens[-1:]:
            script_tokens = ids[:-1]
        for a, b in zip(start + ids[:-1], ids):
            if (a, b) in overridden:
                continue
            if succ.get(a, b) != b:
                raise ValueError(f"token {v['tokens'][a]!r} is followed by both "
                                 f"{v['tokens'][succ[a]]!r} and {v['tokens'][b]!r}: add a gate")
            succ[a] = b
    inputs = sorted(set(succ) | {q for q, _, _ in gate_ids} | {k for _, k, _ in gate_ids})
    n_gates = len(gate_ids)
    if len(inputs) + n_gates > N_EMBD:
        raise ValueError(f"the script needs {len(inputs) + n_gates} directions, {N_EMBD} exist")
    direction = {t: i for i, t in enumerate(inputs)}
    embd = np.zeros((n_vocab, N_EMBD), np.float32)
    head = np.zeros((n_vocab, N_EMBD), np.float32)
    for t, i in direction.items():
        embd[t, i] = 1.0
    for a, b in succ.items():
        head[b, direction[a]] += CHAIN
    weights: dict = {"embd": embd}
    if gate_ids:
        # head 0 of block 0: query and key along a dim of one of the head's slowest RoPE pairs
        # (the fastest turns by 1 rad per position whatever the base), the key token's value
        # along dim hd/2 + g, written to the gate's own direction of the residual stream
        hd = N_EMBD // N_HEAD
        wq = np.zeros((N_EMBD, N_EMBD), np.float32)
        wk = np.zeros((N_EMBD, N_EMBD), np.float32)
        wv = np.zeros((N_EMBD, N_EMBD), np.float32)
        wo = np.zeros((N_EMBD, N_EMBD), np.float32)
        for g, (q, k, s) in enumerate(gate_ids):
            gate_dim = N_EMBD - 1 - g  # never an input direction (checked above)
            qk = hd - 2 - 2 * g  # one dim per RoPE pair, the slowest pairs: they don't turn
            wq[qk, direction[q]] = 20.0
            wk[qk, direction[k]] = 20.0
            wv[hd // 2 + g, direction[k]] = 0.125  # a value of 1 after the norm's x8
            wo[gate_dim, hd // 2 + g] = 1.0
            head[s, gate_dim] += GATE
        weights.update({(0, "attn_q"): wq, (0, "attn_k"): wk, (0, "attn_v"): wv,
                        (0, "attn_output"): wo})
    weights["head"] = head
    tmp = path.with_name(path.name + ".part")  # the vocabulary-only pass is still open
    _write(tmp, v, text, eog, weights)
    os.replace(tmp, path)
    return Scripted(path, prompt_tokens, script_tokens)

