"""The decode engine: sequences in KV slots, one llama_decode per step for all of them.

The engine knows nothing about chat or files: it takes token ids, decodes them, and
picks each sequence's next token with that sequence's own randomness (``methods``) from the
final logits and, for LED and DoLa, the captured hidden states projected by the LM head.
Projection is lazy for LED: only rows whose gate says "explore" are projected, which changes
no token (the base token needs the final layer alone) and saves most of the work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from led_local.decoding import chatformat
from led_local.decoding.filters import Scratch
from led_local.decoding.methods import DecodeConfig, LlamaSampler, seed_sequence
from led_local.decoding.samplers import token_logprob
from led_local.decoding.unit import Batch
from led_local.errors import ConfigError, LedError
from led_local.llama.capture import make_capture
from led_local.llama.embeddings import LazyInputRows
from led_local.llama.gguf_info import ModelInfo, model_info
from led_local.llama.grammar import Grammar, GrammarState
from led_local.llama.head import LMHead
from led_local.llama.projection import GraphProjection, resolve_projection
from led_local.llama.runtime import Runtime, default_threads

# the speed assumed for a KV stream copy (one memcpy in llama.cpp): below the 3.6-5.4 GB/s that
# copies of 47 and 188 MB took on a 2-core x86 VM, so that a copy is never chosen for less
# than it saves
COPY_BYTES_PER_S = 2e9

PROMPT_TAIL = 32  # the prompt's last tokens whose text says where the response starts

@dataclass
class Sequence:
    """One sequence being generated in KV slot ``slot``; ``pending`` is the token chosen but
    not yet decoded (once done: the end-of-generation token, or the last token).
    ``depths`` holds the chosen LED depth per token (None: not explored). With the engine's
    ``embed``, ``embed_sum`` accumulates (float64) the final-norm states at the response's
    positions, ``embed_count`` of them (see ``Engine``)."""

    slot: int
    max_tokens: int
    n_past: int = 0
    tokens: list[int] = field(default_factory=list)
    depths: list[int | None] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    in_scope: bool = True
    scope_end: int | None = None  # index of the token that completed the end-of-thinking marker
    scope_wait: bool = False  # out of scope until the response opens thinking itself
    finish_reason: str | None = None
    pending: int | None = None
    pending_vec: np.ndarray | None = None  # fed instead of ``pending`` when set (SwiReasoning)
    rng: np.random.Generator | None = None
    sampler: LlamaSampler | None = None
    embed_sum: np.ndarray | None = None
    embed_count: int = 0
    cfg: DecodeConfig | None = None  # this sequence's method (None: the engine's)
    trace: object | None = None  # the method's own per-sequence record (HAPO, SwiReasoning)
    grammar: GrammarState | None = None  # constrains every pick (llama.grammar)
    banned: np.ndarray | None = None  # token ids never picked (ignore_eos: the end tokens)
    _text_tail: str = ""

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def explored(self) -> int:
        return sum(d is not None for d in self.depths)

    @property
    def embedding(self) -> np.ndarray | None:
        """(n_embd,) float32 mean final-norm state over the response's tokens (the last one,
        end-of-generation included), or None when none was captured."""
        if self.embed_sum is None or self.embed_count == 0:
            return None
        return (self.embed_sum / self.embed_count).astype(np.float32)



class Fill:
    """A prompt being evaluated into a slot: ``reused`` tokens came from the cache, ``done``
    of the prompt are in the KV cache; ``advance`` evaluates the next chunk."""

    def __init__(self, engine: Engine, slot: int, tokens: list[int], reused: int,
                 logits: bool) -> None:
        self.engine, self.slot, self.tokens, self.logits = engine, slot, tokens, logits
        self.reused = self.done = reused

    @property
    def finished(self) -> bool:
        return self.done >= len(self.tokens)

    def advance(self, limit: int | None = None) -> bool:
        """Evaluate up to ``limit`` more tokens (default and at most: the batch size) in one
        llama_decode; True once the whole prompt is in the cache."""
        self.engine.advance_fills([self], limit)
        return self.finished


def share(remaining: list[int], budget: int) -> list[int]:
    """``budget`` tokens shared among prompts with ``remaining`` tokens each, as evenly as
    their lengths allow: a short prompt's unused share goes to the longer ones, and two
    unfinished shares differ by one token at most; at least one each while budget is left."""
    out = [0] * len(remaining)
    left = budget
    order = sorted(range(len(remaining)), key=lambda i: (remaining[i], i))
    for k, i in enumerate(order):
        out[i] = min(remaining[i], left // (len(order) - k))
        left -= out[i]
    return out


class Engine:
    """A model loaded for one decoding method, with ``n_seq`` KV slots.

    n_ctx: total context (shared by the slots); threads: llama.cpp's and the projection's
    threads (default: all cores up to 8; both run one after the other, never together);
    capture: auto, callback or layer-inp; logprobs: record each token's final-layer logprob;
    projection: auto, host or graph, where depth logits are computed (``llama.projection``).
    embed: average each sequence's final-norm hidden state (the LM head's input) over its
    response tokens, read from llama.cpp's embeddings output of the same decodes (switched on
    around each step only), plus one extra decode of every finished sequence's last token
    (the end-of-generation token, or the last token of a length-cut response), whose state
    no step computes. The state at the prompt's last token is left out. Sampled tokens do not
    change: the graph and every step's outputs are the same with embeddings on.
    grammar: the constraint of every sequence that ``new_sequence`` gives none (None: free).
    """

    def __init__(
        self,
        model: str | os.PathLike | ModelInfo,
        cfg: DecodeConfig,
        *,
        n_ctx: int = 4096,
        n_seq: int = 1,
        n_batch: int = 512,
        threads: int | None = None,
        capture: str = "auto",
        logprobs: bool = False,
        projection: str = "auto",
        verbose: bool = False,
        batch_invariant: bool = False,
        embed: bool = False,
        reasoning_format: str | None = None,
        grammar: Grammar | None = None,
    ) -> None:
        self.info = model_info(model)
        self.grammar = grammar  # every sequence's constraint unless new_sequence gives one
        self.format = chatformat.for_model(self.info, reasoning_format)
        self.embed = embed
        self.cfg = cfg = cfg.with_format(self.format)
        self.logprobs = logprobs
        self.head: LMHead | None = None
        self.capture = None
        self.graph: GraphProjection | None = None
        unit = cfg.unit
        unit.check_model(self.info, cfg)
        self.layers: list[int] = unit.layers(self.info, cfg)
        if self.layers and resolve_projection(projection, self.info,
                                              unit.graph_refusal(self.info, cfg)) == "graph":
            self.graph = GraphProjection(self.info, self.layers, norm=unit.norm(cfg),
                                         temperature=cfg.temperature,
                                         candidates=unit.graph_candidates(cfg))
        elif self.layers:
            self.capture = make_capture(self.info, self.layers, prefer=capture)
            self.head = LMHead(self.info, threads=threads or default_threads())
        self.rt = Runtime(self.info.path, n_ctx=n_ctx, n_seq=n_seq, n_batch=n_batch,
                          n_threads=threads, verbose=verbose, info=self.info,
                          batch_invariant=batch_invariant,
                          n_outputs_max=n_seq if self.graph is not None else 0,
                          eval_callback=self.capture.callback if self.capture else None)
        if self.capture is not None:
            self.capture.attach(self.rt)
        if self.graph is not None:
            self.graph.attach(self.rt)
        self.n_seq = n_seq
        self._cached: dict[int, list[int]] = {}
        self._scope_ends: dict[str, chatformat.ScopeEnd | None] = {}
        # the input embedding rows, for methods that feed vectors instead of tokens
        self.embeddings: np.ndarray | LazyInputRows | None = None
        self.shared: dict[str, object] = {}  # what the engine's own method set up, by name
        self.scratch = Scratch()  # the methods' work arrays (one decode thread uses an engine)
        try:
            unit.setup(self)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.rt.close()
        if self.head is not None:
            self.head.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sequences ------------------------------------------------------------------------
    def new_sequence(self, slot: int, *, seed: tuple, max_tokens: int,
                     cfg: DecodeConfig | None = None, prompt: list[int] | None = None,
                     grammar: Grammar | None = None, ignore_eos: bool = False) -> Sequence:
        """A sequence in ``slot`` whose randomness derives from ``seed`` alone; ``cfg`` gives
        it its own method (default: the engine's), which ``check_config`` must accept.
        ``prompt`` (its token ids) decides where the response starts: inside thinking, out of
        it for good (the prompt closed it), or out of it until the response opens it
        (``scope``). ``grammar`` constrains its output: before every pick the tokens it does
        not allow get -inf final logits, whatever the method (docs/LED.md for LED);
        ``ignore_eos`` does the same to the end-of-generation tokens, so that it runs to
        ``max_tokens`` (or a stop string), as llama-server's ``ignore_eos``."""
        seq = Sequence(slot=slot, max_tokens=max_tokens,
                       cfg=cfg.with_format(self.format) if cfg is not None else None,
                       grammar=None, banned=self.rt.eog_tokens() if ignore_eos else None)
        if grammar is not None or self.grammar is not None:
            seq.grammar = GrammarState(self.reply_grammar(grammar or self.grammar, prompt),
                                       self.rt.vocab)
        cfg = self._cfg(seq)
        where = self.scope(cfg, prompt)
        seq.in_scope, seq.scope_wait = where == chatformat.INSIDE, where == chatformat.MODEL
        cfg.unit.start(self, seq, cfg, seed_sequence(*seed))
        return seq

    def scope(self, cfg: DecodeConfig, prompt: list[int] | None) -> str:
        """Where a response to ``prompt`` starts (chatformat INSIDE, CLOSED or MODEL): as the
        chat format reads the prompt's end when ``cfg`` ends the scope at the format's own
        marker; inside for ``--think-end ''`` (the whole response), another marker, or no
        prompt given."""
        fmt = self.format
        if not fmt.think_start or cfg.think_end != fmt.think_end or prompt is None:
            return chatformat.INSIDE
        return fmt.prompt_scope(self._tail(prompt))

    def reply_grammar(self, grammar: Grammar, prompt: list[int] | None) -> Grammar:
        """``grammar`` (the answer's) as the grammar of a whole reply to ``prompt``: the chat
        format's thinking may come first where the prompt leaves it open."""
        if prompt is None or not self.format.think_start:
            return grammar
        return self.format.constrain(grammar, self.format.prompt_scope(self._tail(prompt)))

    def _tail(self, prompt: list[int]) -> str:
        tail = b"".join(self.rt.token_bytes(t) for t in prompt[-PROMPT_TAIL:])
        return tail.decode("utf-8", "replace")

    def _cfg(self, seq: Sequence) -> DecodeConfig:
        return seq.cfg or self.cfg

    def scope_end(self, cfg: DecodeConfig) -> chatformat.ScopeEnd | None:
        """Where ``cfg``'s thinking scope ends (None: it never does)."""
        marker = cfg.with_format(self.format).think_end
        if marker not in self._scope_ends:
            self._scope_ends[marker] = chatformat.ScopeEnd.of(self.rt, marker)
        return self._scope_ends[marker]

    def columns(self, hidden: list[int]) -> list[int]:
        """Which captured states (columns of ``capture.collect()``) hold hidden ``hidden``."""
        return [self.layers.index(h) for h in hidden]

    def project(self, states: np.ndarray, *, norm: bool, extras: bool = True) -> np.ndarray:
        """(R, m, n_embd) captured states -> (R, m, V) logits in one ggml product, exact
        (``head.LMHead.project``); ``extras``: with the logit scale and soft-capping that
        follow the model's head."""
        r, m, n = states.shape
        out = self.head.project(states.reshape(r * m, n), norm=norm, extras=extras)
        return out.reshape(r, m, -1)

    def context(self, seq: Sequence) -> list[int]:
        """The token ids in ``seq``'s KV slot: its prompt and the response fed so far (-1
        where a vector was fed), what the step being picked was computed after."""
        return self._cached.get(seq.slot, [])

    def check_config(self, cfg: DecodeConfig) -> None:
        """Refuse a per-sequence method this engine cannot run: hidden states it does not
        capture, an in-graph projection built for other settings, what the method checks."""
        unit, own = cfg.unit, self.cfg.unit
        unit.check_model(self.info, cfg)
        need = unit.layers(self.info, cfg)
        if self.graph is not None and need and unit.graph_key(cfg) != own.graph_key(self.cfg):
            raise ConfigError("projection", f"graph builds the depth logits for the engine's "
                              f"own {own.describe(self.cfg)} settings; a sequence cannot "
                              "change them (start with projection host)")
        if not set(need) <= set(self.layers):
            raise LedError(f"method {unit.name} with these layers needs hidden states this "
                           f"engine does not capture (it was started with "
                           f"{own.describe(self.cfg)})")
        unit.check(self, cfg)

    def prefill(self, slot: int, tokens: list[int]) -> None:
        """Evaluate a prompt into ``slot``, reusing the longest prefix already cached there;
        the logits (and states) of its last token are then ready for ``start``."""
        if len(tokens) >= self.rt.n_ctx_seq:
            raise LedError(f"the prompt has {len(tokens)} tokens, more than the context allows "
                           f"({self.rt.n_ctx_seq}); raise `ctx` or shorten it")
        self._fill(slot, tokens, logits=True)

    def load_prefix(self, slot: int, tokens: list[int]) -> None:
        """Evaluate ``tokens`` into ``slot`` without any output (a shared prompt's prefix)."""
        self._fill(slot, tokens, logits=False)

    def _fill(self, slot: int, tokens: list[int], *, logits: bool) -> None:
        fill = self.begin_fill(slot, tokens, logits=logits)
        while not fill.advance():
            pass

    def begin_fill(self, slot: int, tokens: list[int], *, logits: bool = False) -> Fill:
        """Start evaluating ``tokens`` into ``slot`` (the longest cached prefix reused, the
        rest left to ``Fill.advance``, chunk by chunk, so that a caller may decode other
        sequences between chunks); ``logits``: the last token's logits (and states) wanted."""
        n = len(tokens)
        if n == 0 and logits:
            raise LedError("the prompt is empty")
        common = 0
        for a, b in zip(self._cached.get(slot, []), tokens):
            if a != b:
                break
            common += 1
        if logits:
            common = min(common, n - 1)  # the last token must be decoded to get its logits
        if not self.rt.seq_rm(slot, common, -1):
            # a recurrent state cannot be cut back to the common prefix: start the slot over
            common = 0
            if not self.rt.seq_rm(slot, -1, -1):
                raise RuntimeError(f"llama.cpp could not clear KV slot {slot}")
        self._cached[slot] = list(tokens[:common])  # true even if interrupted later
        return Fill(self, slot, tokens, common, logits)

    def advance_fills(self, fills: list[Fill], limit: int | None = None) -> None:
        """Evaluate the next chunks of the prompts ``fills`` (distinct slots) in one
        llama_decode: ``limit`` tokens in all (default and at most: the batch size), shared
        by ``share``. A batch-invariant context fills each slot's cache exactly as a prompt
        evaluated alone would (tested); the sequences go in increasing slot order, which that
        needs, and consecutive slots share llama.cpp's ubatches. At most one prompt may want
        its last token's logits (``_prompt_row``)."""
        fills = sorted((f for f in fills if not f.finished), key=lambda f: f.slot)
        if not fills:
            return
        if sum(f.logits for f in fills) > 1:
            raise ValueError("one prompt at a time may want its logits")
        budget = self.rt.n_batch if limit is None else max(1, min(limit, self.rt.n_batch))
        sizes = share([len(f.tokens) - f.done for f in fills], max(budget, len(fills)))
        chunks = [f.tokens[f.done:f.done + size] for f, size in zip(fills, sizes)]
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        outs: list[bool] = []
        for f, chunk in zip(fills, chunks):
            if not chunk:
                continue
            tokens += chunk
            positions += range(f.done, f.done + len(chunk))
            slots += [f.slot] * len(chunk)
            outs += [False] * (len(chunk) - 1) + [f.logits and f.done + len(chunk) == len(f.tokens)]
        rows = [i for i, o in enumerate(outs) if o]
        if self.graph is not None and rows:
            self.graph.enable(True)
        if self.capture is not None:
            self.capture.begin(np.array(rows, np.int64))
        self.rt.decode(tokens, positions, slots, outs)
        for f, chunk in zip(fills, chunks):
            self._cached[f.slot].extend(chunk)
            f.done += len(chunk)
        if rows:
            self._prompt_row = rows[0]

    def cached_len(self, slot: int) -> int:
        """How many tokens of ``slot`` are in the KV cache."""
        return len(self._cached.get(slot, []))

    def copy_seconds(self) -> float:
        """About how long ``fork`` takes: nothing in a unified cache, where the cells are
        shared; in a batch-invariant context llama.cpp copies the source's whole KV stream
        (every cell of the slot, used or not) at the next decode: its bytes at
        COPY_BYTES_PER_S."""
        if self.rt.kv_unified:
            return 0.0
        return self.info.kv_bytes_per_token * self.rt.n_ctx_seq / COPY_BYTES_PER_S

    def fork(self, src: int, dst: int) -> None:
        """Share slot ``src``'s cached tokens with slot ``dst`` (no copy in a unified cache; a
        recurrent state is copied when either sequence next decodes)."""
        self.free(dst)
        self.rt.seq_cp(src, dst)
        self._cached[dst] = list(self._cached.get(src, []))

    def move(self, src: int, dst: int) -> None:
        """Move a sequence's cache from ``src`` to the empty slot ``dst`` (cell layout kept)."""
        self.fork(src, dst)
        self.free(src)

    def free(self, slot: int) -> None:
        """Drop everything ``slot`` holds in the KV cache."""
        self._cached.pop(slot, None)
        if not self.rt.seq_rm(slot, -1, -1):
            raise RuntimeError(f"llama.cpp could not clear KV slot {slot}")

    def start(self, seq: Sequence, n_prompt: int) -> None:
        """Pick the first token of a sequence whose slot holds the just-prefilled prompt."""
        seq.n_past = n_prompt
        self._pick([seq], [self._prompt_row])
        if self.embed and seq.done:
            self._embed_last([seq])

    def step(self, seqs: list[Sequence]) -> None:
        """Decode every live sequence's pending token in one llama_decode and pick the next."""
        live = [s for s in seqs if not s.done]
        if not live:
            return
        if self.capture is not None or self.graph is not None:
            # LED outside every sequence's thinking scope needs no hidden states
            wanted = any(self._cfg(s).unit.wants_states(s, self._cfg(s)) for s in live)
            if self.capture is not None:
                self.capture.begin(np.arange(len(live) if wanted else 0, dtype=np.int64))
            if self.graph is not None:
                self.graph.enable(wanted)
        # only a response token's state counts, not the prompt's last token's
        in_response = [s for s in live if s.tokens] if self.embed else []
        if in_response:
            self.rt.set_embeddings(True)
        try:
            args = ([s.n_past for s in live], [s.slot for s in live], [True] * len(live))
            if any(s.pending_vec is not None for s in live):
                # a batch carries tokens or vectors, not both: tokens go as their input rows,
                # which gives the same logits as the token path
                rows = np.empty((len(live), self.embeddings.shape[1]), np.float32)
                tok = [i for i, s in enumerate(live) if s.pending_vec is None]
                if tok:  # all-latent steps have none
                    rows[tok] = self.embeddings[np.array([live[i].pending for i in tok])]
                for i, s in enumerate(live):
                    if s.pending_vec is not None:
                        rows[i] = s.pending_vec
                self.rt.decode_embd(rows, *args)
            else:
                self.rt.decode([s.pending for s in live], *args)
            self._add_states(live, in_response)
        finally:
            if in_response:
                self.rt.set_embeddings(False)
        for s in live:
            # a fed vector is no token: -1 stops prefix reuse there
            self._cached.setdefault(s.slot, []).append(
                s.pending if s.pending_vec is None else -1)
            s.n_past += 1
        self._pick(live, list(range(len(live))))
        if self.embed:
            self._embed_last([s for s in live if s.done])

    # -- response features (embed) --------------------------------------------------------
    def _add_states(self, rows: list[Sequence], wanted: list[Sequence]) -> None:
        """Add output row i's final-norm state to rows[i]'s sum, for the sequences wanted."""
        keep = {id(s) for s in wanted}
        for i, s in enumerate(rows):
            if id(s) not in keep:
                continue
            h = self.rt.embedding(i)
            if s.embed_sum is None:
                s.embed_sum = np.zeros(h.shape[0], np.float64)
            s.embed_sum += h
            s.embed_count += 1

    def _embed_last(self, done: list[Sequence]) -> None:
        """Decode each just-finished sequence's last token (never fed by a step) in one batch,
        embeddings on, and add its state; the logits are ignored, the slot is left to free."""
        if not done:
            return
        self.rt.set_embeddings(True)
        try:
            self.rt.decode([s.pending for s in done], [s.n_past for s in done],
                           [s.slot for s in done], [True] * len(done))
            self._add_states(done, done)
        finally:
            self.rt.set_embeddings(False)
        for s in done:
            self._cached.setdefault(s.slot, []).append(s.pending)

    # -- token choice ---------------------------------------------------------------------
    def _pick(self, seqs: list[Sequence], rows: list[int]) -> None:
        """Choose each sequence's next token from output row rows[i] of the last decode
        (and, for methods that read hidden states, from the states captured for those rows,
        in the same order): each method picks for all of its sequences at once."""
        states = self.capture.collect() if self.capture is not None else None
        for s, r in zip(seqs, rows):
            if s.grammar is not None:  # in llama.cpp's own row: the sampler chain reads it too
                s.grammar.mask(self.rt.logits_view(r))
            if s.banned is not None:
                self.rt.logits_view(r)[s.banned] = -np.inf
        cfgs = [self._cfg(s) for s in seqs]
        units = [c.unit for c in cfgs]
        scored = [self.wants_logprobs(s) for s in seqs]
        # llama.cpp's own sampler reads the logits in place; copy them only when needed
        final = None
        if any(scored) or any(u.reads_logits for u in units):
            final = np.stack([self.rt.logits_view(r) for r in rows])  # (a copy)
        batch = Batch(seqs, cfgs, rows, final, states, [0] * len(seqs), [None] * len(seqs))
        groups: dict = {}
        for i, u in enumerate(units):
            groups.setdefault(u, []).append(i)
        for u, idx in groups.items():
            u.pick(self, batch, idx)
        for i, (s, cfg, u) in enumerate(zip(seqs, cfgs, units)):
            self._accept(s, batch.tokens[i], batch.depths[i],
                         final[i] if scored[i] else None, u.logprob_temperature(cfg))
            u.after_accept(self, s)

    def wants_logprobs(self, s: Sequence) -> bool:
        """Whether ``s``'s tokens get their log-probabilities (the engine's ``logprobs``; a
        subclass may ask for them per sequence: a full-vocabulary softmax per token)."""
        return self.logprobs

    def _accept(self, s: Sequence, tok: int, depth: int | None, final: np.ndarray | None,
                temperature: float) -> None:
        """Append ``tok`` (unless it ends generation), its depth and, given the final logits,
        its log-probability; update the thinking scope and the stop condition."""
        if self.rt.is_eog(tok):  # the end-of-generation token is not part of the text
            s.finish_reason = "stop"
            s.pending = tok
            return
        if s.grammar is not None:
            s.grammar.accept(tok)
        s.tokens.append(tok)
        s.depths.append(depth)
        if final is not None:
            s.logprobs.append(token_logprob(final, tok, temperature=temperature))
        s.pending = tok
        if s.scope_wait:  # thinking counts only when the response opens with its marker
            s._text_tail += self.rt.token_text(tok)
            opened = self.format.opening(s._text_tail)
            if opened is not None:
                s.scope_wait, s.in_scope, s._text_tail = False, opened, ""
            return self._check_length(s)
        end = self.scope_end(self._cfg(s)) if s.in_scope else None
        if end is not None:
            s._text_tail, ended = end.advance(s._text_tail, tok, self.rt.token_text(tok))
            if ended:
                s.in_scope = False
                s.scope_end = len(s.tokens) - 1
        self._check_length(s)

    def _check_length(self, s: Sequence) -> None:
        if len(s.tokens) >= s.max_tokens or s.n_past + 1 >= self.rt.n_ctx_seq:
            s.finish_reason = "length"
