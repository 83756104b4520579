"""Native llama.cpp objects and their lifetimes: model, context, batch, tokenizer, chat template.

Ownership is explicit: ``Runtime`` owns one llama_model, one llama_context and one llama_batch
and frees them in reverse order (batch, context, model). The eval callback, when a capture
uses it, is handed over at context creation and kept referenced for the context's whole life.
This module knows nothing about LED; it decodes batches and hands back logits rows.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import llama_cpp
import numpy as np

from led_local.errors import ContextFullError, LedError
from led_local.llama import native
from led_local.llama.gguf_file import ArrayInfo
from led_local.llama.gguf_info import ModelInfo, inspect_model

_backend_ready = False


def _init_backend(verbose: bool) -> None:
    global _backend_ready
    native.set_llama_logging(sys.stderr.write if verbose else None)
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


def default_threads() -> int:
    """Physical-ish core count for llama.cpp: all cores up to 8 (decode is bandwidth-bound)."""
    return max(1, min(8, os.cpu_count() or 1))


def max_token_bytes(info: ModelInfo) -> int:
    """An upper bound on the bytes of text one token covers: four times the longest entry of
    the GGUF vocabulary (at least 16), a margin for byte tokens and normalisation."""
    tokens = info.gguf.fields.get("tokenizer.ggml.tokens")
    longest = tokens.max_bytes if isinstance(tokens, ArrayInfo) else 0
    return 4 * max(16, longest)


def context_limit(info: ModelInfo) -> int:
    """The most tokens a prompt may have for this model: its training context length
    (``<arch>.context_length``), or 1 Mi tokens when the file does not say."""
    n = info.gguf.fields.get(f"{info.architecture}.context_length")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1 << 20


def _load_interruptibly(path: os.PathLike, mparams: Any) -> Any:
    """``llama_model_load_from_file``, stopped by Ctrl-C: a SIGINT handler sets a flag that
    the load's progress callback reads, which aborts the load (a KeyboardInterrupt raised in a
    ctypes callback would be swallowed). An interrupted load prints one line and exits 130."""
    stop = [False]

    def progress(_progress: float, _user: Any) -> bool:
        return not stop[0]

    def interrupt(*_args: object) -> None:
        stop[0] = True

    callback = llama_cpp.llama_progress_callback(progress)  # referenced until the load ends
    mparams.progress_callback = callback
    mparams.progress_callback_user_data = None
    previous = None
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        previous = signal.signal(signal.SIGINT, interrupt)
    try:
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if stop[0]:
        if model:
            llama_cpp.llama_model_free(model)
        print("led-local: interrupted while loading the model", file=sys.stderr, flush=True)
        raise SystemExit(130)
    return model


def invariant_flash_attention() -> bool:
    """Whether batch-invariant contexts use flash attention: where the build's CPU kernel
    computes each query row by one arithmetic whatever shares its batch
    (patches/0003-fa-batch-invariant.patch) and the model runs on the CPU (led-local offloads
    every layer when a GPU backend is there, and the GPU kernels are not covered: there
    batch-invariant contexts keep flash attention off)."""
    return (native.fa_invariant_patch_version() is not None
            and not llama_cpp.llama_supports_gpu_offload())


class Runtime:
    """A loaded model with one context.

    n_ctx: context length in tokens; n_batch: most tokens per decode call; n_seq: most
    sequences decoded together; eval_callback: a native.EvalCallback or None;
    vocab_only: load the tokenizer alone (tokenize and apply_chat_template, nothing else);
    n_outputs_max: most output rows in one decode (0: n_batch), which bounds what llama.cpp
    reserves for per-output work such as the in-graph projection.

    By default the KV cache is unified (one buffer, n_ctx shared by all sequences) and flash
    attention is left to llama.cpp. ``batch_invariant`` instead gives each sequence its own KV
    stream of n_ctx / n_seq cells, and uses flash attention only where its kernel computes a
    row alike for one query and for many (``invariant_flash_attention``; stock ggml's CPU
    kernel splits the KV by thread count for a lone query and picks another kernel for many):
    then a sequence's logits are bit-identical whatever else shares its batch, provided every
    batch lists sequences in increasing id order (llama.cpp then keeps the batch order across
    ubatches, which captures rely on).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_seq: int = 1,
        n_threads: int | None = None,
        n_gpu_layers: int = -1,
        eval_callback: Any = None,
        verbose: bool = False,
        info: ModelInfo | None = None,
        batch_invariant: bool = False,
        vocab_only: bool = False,
        n_outputs_max: int = 0,
    ) -> None:
        if n_ctx < 16:
            raise LedError(f"`ctx` must be >= 16, got {n_ctx}")
        self.info = info or inspect_model(path)
        _init_backend(verbose)
        self.model = None
        self.ctx = None
        self.batch = None
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.vocab_only = vocab_only
        model = _load_interruptibly(self.info.path, mparams)
        if not model:
            raise LedError(
                f"llama.cpp could not load {self.info.path} (architecture "
                f"'{self.info.architecture}' unsupported by this llama.cpp, or a damaged file)"
            )
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self._eog: np.ndarray | None = None
        # a recurrent state (all of it, or the recurrent layers of a hybrid) holds no past
        # positions: a sequence's cache can be dropped or extended, not cut back
        self.recurrent = bool(llama_cpp.llama_model_is_recurrent(model)
                              or llama_cpp.llama_model_is_hybrid(model))
        if vocab_only:  # tokenizer and chat template only: no context, no batch
            return
        self.n_batch = max(n_batch, n_seq)
        self.n_seq = n_seq
        threads = n_threads or default_threads()
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = n_seq
        cparams.n_outputs_max = n_outputs_max
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        # unified: one ubatch split that keeps batch order; per-sequence streams: see above
        cparams.kv_unified = self.kv_unified = not batch_invariant
        if batch_invariant:
            cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                                       if invariant_flash_attention()
                                       else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.no_perf = True
        self._eval_callback = eval_callback  # referenced for the context's whole life
        if eval_callback is not None:
            cparams.cb_eval = ctypes.cast(eval_callback, llama_cpp.ggml_backend_sched_eval_callback)
            cparams.cb_eval_user_data = None
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            self.close()
            raise LedError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self.ctx = ctx
        self.n_batch = llama_cpp.llama_n_batch(ctx)  # llama.cpp caps it at the context size
        self.n_ctx = llama_cpp.llama_n_ctx(ctx)
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(ctx)  # what one sequence may fill
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.embd_batch = None  # allocated by the first decode_embd

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Free batch, context and model, in that order; safe to call twice."""
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "embd_batch", None) is not None:
            llama_cpp.llama_batch_free(self.embd_batch)
            self.embd_batch = None
        if self.ctx is not None:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model is not None:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tokens ---------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True, limit: int | None = None,
                 bos: bool = True) -> list[int]:
        """Token ids of ``text``, special tokens parsed; BOS added when the vocab wants it
        and the text does not already start with it. With ``limit``, a text that cannot fit
        in ``limit`` tokens raises ContextFullError, judged first by its size in bytes (no
        token spans more bytes than the vocabulary's longest, ``max_token_bytes``) and only
        then by tokenizing, so that a huge text never reaches llama.cpp's tokenizer. ``bos``
        False tokenizes a continuation: nothing added (no BOS, nor an EOS the vocabulary
        would append)."""
        data = text.encode("utf-8")
        if limit is not None and len(data) > limit * max_token_bytes(self.info):
            raise ContextFullError(f"the prompt is {len(data)} bytes, more than {limit} tokens "
                                   "can hold")
        bos_text = self.token_text(llama_cpp.llama_vocab_bos(self.vocab))
        add_special = bos and not (bos_text and text.startswith(bos_text))
        n_max = len(data) + 8 if limit is None else min(len(data) + 8, limit + 1)
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, special)
        if n < 0 and limit is not None and -n > limit:
            raise ContextFullError(f"the prompt is {-n} tokens, more than the context allows "
                                   f"({limit})")
        if n < 0:
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, special)
        if limit is not None and n > limit:
            raise ContextFullError(f"the prompt is {n} tokens, more than the context allows "
                                   f"({limit})")
        return list(buf[:n])

    def token_bytes(self, token: int, *, special: bool = True) -> bytes:
        """The bytes a token stands for (UTF-8 may be split across tokens)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.token_bytes(token).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def eog_tokens(self) -> np.ndarray:
        """The ids of every end-of-generation token (EOS, EOT, end of turn...), ascending."""
        if self._eog is None:
            self._eog = np.array([t for t in range(self.n_vocab) if self.is_eog(t)],
                                 dtype=np.int64)
        return self._eog

    def is_added(self, token: int) -> bool:
        """Whether ``token`` is a control or user-defined (added) token: one the tokenizer
        never builds out of other text, so its text inside another token is not it."""
        attr = llama_cpp.llama_vocab_get_attr(self.vocab, token)
        return bool(attr & (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
                            | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED))

    def apply_chat_template(self, messages: Sequence[dict[str, str]],
                            variables: dict | None = None,
                            tools: list[dict] | None = None, *,
                            add_generation_prompt: bool = True) -> str:
        """Render messages with the model's chat template (GGUF metadata, or the one a
        ``--chat-template`` file put in ``info``), in a time- and size-limited worker, with
        the template variables of ``info.chat_vars`` (the thinking switches), updated by
        ``variables``, the OpenAI ``tools`` list (None: no tools), and the assistant's
        opening unless ``add_generation_prompt`` is False."""
        from led_local.llama.template import render_chat_template

        template = self.info.chat_template
        if not template:
            raise LedError(f"{self.info.path.name} has no chat template in its metadata; use "
                           "`raw` or `chat_template` FILE")
        return render_chat_template(
            template, list(messages),
            eos_token=self.token_text(llama_cpp.llama_vocab_eos(self.vocab)),
            bos_token=self.token_text(llama_cpp.llama_vocab_bos(self.vocab)),
            variables={**self.info.chat_vars, **(variables or {})}, tools=tools,
            add_generation_prompt=add_generation_prompt)

    # -- decoding -------------------------------------------------------------------------
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Remove positions [p0, p1) of ``seq`` (-1: open end); False where the memory cannot
        (a recurrent state is never partially erased: then nothing was removed)."""
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_cp(self, src: int, dst: int) -> None:
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def decode(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int],
               outputs: Sequence[bool]) -> None:
        """One llama_decode of up to n_batch tokens; rows with ``outputs`` get logits, in order."""
        n = len(tokens)
        if n > self.n_batch:
            raise ValueError(f"batch of {n} tokens exceeds n_batch {self.n_batch}")
        b = self.batch
        for i in range(n):
            b.token[i] = tokens[i]
        self._submit(b, positions, seqs, outputs, what="llama_decode")

    def _submit(self, b, positions: Sequence[int], seqs: Sequence[int],
                outputs: Sequence[bool], *, what: str) -> None:
        """Fill a batch's positions, sequence ids and output flags, then decode it."""
        n = len(positions)
        b.n_tokens = n
        for i in range(n):
            b.pos[i] = positions[i]
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seqs[i]
            b.logits[i] = outputs[i]
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc == 1:
            raise ContextFullError(f"the context of {self.n_ctx} tokens is full")
        if rc != 0:
            raise RuntimeError(f"{what} failed with code {rc}")

    def set_embeddings(self, on: bool) -> None:
        """Export the final-norm hidden state (the LM head's input) of every output row of the
        following decodes. While on, llama.cpp makes every token of a batch an output."""
        llama_cpp.llama_set_embeddings(self.ctx, on)

    def embedding(self, row: int) -> np.ndarray:
        """A copy of output row ``row``'s final-norm state (n_embd_out,) float32 from the last
        decode made with embeddings on."""
        ptr = llama_cpp.llama_get_embeddings_ith(self.ctx, row)
        if not ptr:
            raise RuntimeError(f"llama.cpp has no embedding for output row {row}")
        n = llama_cpp.llama_model_n_embd_out(self.model)
        return np.ctypeslib.as_array(ptr, shape=(n,)).copy()

    def decode_embd(self, rows: np.ndarray, positions: Sequence[int], seqs: Sequence[int],
                    outputs: Sequence[bool]) -> None:
        """One llama_decode of input vectors instead of tokens: rows (n, n_embd) float32 go to
        the first block as they are (a batch carries tokens or vectors, never both)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        n, width = rows.shape
        if n > self.n_batch:
            raise ValueError(f"batch of {n} rows exceeds n_batch {self.n_batch}")
        n_embd = llama_cpp.llama_model_n_embd(self.model)
        if width != n_embd:
            raise ValueError(f"embedding rows must have {n_embd} values, got {width}")
        if self.embd_batch is None:
            self.embd_batch = llama_cpp.llama_batch_init(self.n_batch, n_embd, 1)
        b = self.embd_batch
        ctypes.memmove(b.embd, rows.ctypes.data, rows.nbytes)
        self._submit(b, positions, seqs, outputs, what="llama_decode of embeddings")

    def logits_view(self, row: int) -> np.ndarray:
        """Output row ``row``'s logits (V,) float32 in llama.cpp's own buffer, writable (a
        constraint masks them there, before any sampler reads them); valid until the next
        decode."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def logits(self, row: int) -> np.ndarray:
        """A copy of output row ``row``'s logits (V,) float32 from the last decode."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
