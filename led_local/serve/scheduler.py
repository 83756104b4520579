"""The decode thread: it owns the engine; requests reach it through a FIFO queue.

Up to P choices (a request's ``n`` samples) decode together, one ``llama_decode`` per step, in
the engine's batch-invariant setting; a request waits in the queue until it has a slot for each
of its choices, and a finished or cancelled choice frees its slot before the next step. A
request's prompt minus its last token is loaded into its first slot and forked into the others
(``n`` > 1 shares the prompt's KV); every choice starts with the prompt's last token pending,
so its first token is picked in an ordinary step, as ``decoding.batch`` does. Choice i draws
its randomness from (seed,) for i = 0, as ``generate`` does, and (seed, i) otherwise.

A free slot keeps the KV of the sequence that finished in it: a new request goes to the free
slot that shares the longest token prefix with its prompt (a prompt cache), so a chat
front-end's next turn evaluates only the new tokens.
"""

from __future__ import annotations

import itertools
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from led_local.decoding.chatformat import MODEL, PLAIN, ChatFormat
from led_local.decoding.engine import Engine, Fill, Sequence
from led_local.decoding.methods import DecodeConfig
from led_local.decoding.samplers import log_probs_at, probs_at, top_candidates
from led_local.decoding.tool_calls import ToolCall, ToolStream, ToolSyntax
from led_local.errors import LedError
from led_local.llama.grammar import Grammar
from led_local.serve.metrics import Metrics
from led_local.serve.text import TextStream


def _finite(logprob: float) -> float:
    """A log-probability as JSON can carry it: -9999.0 (OpenAI's floor) for -inf or NaN."""
    return logprob if math.isfinite(logprob) else -9999.0


# how many of the final layer's top candidates a ``led_tokens`` entry lists
LED_TOP = 3
# prompt tokens evaluated between two decode steps (serve --prefill-chunk N); None: as many
# as take about PREFILL_SECONDS by the measured speed of earlier chunks, the whole batch
# while no stream waits (serve --prefill-chunk auto, the default)
PREFILL_CHUNK: int | None = None
# a request takes the free slot whose cache holds the longest prefix of its prompt when that
# is more than this fraction of the prompt (llama-server's --slot-prompt-similarity default),
# else a slot whose cache it sacrifices least (``choose_slot``)
CACHE_HIT = 0.5
PREFILL_SECONDS = 0.035
PREFILL_LEAST = 2  # also the first auto chunk, before any has been timed


class QueueFull(Exception):
    """More requests wait than ``--max-queue`` allows."""


@dataclass
class Work:
    """One request as the decode thread sees it; ``emit`` delivers its events (thread-safe)."""

    tokens: list[int]
    cfg: DecodeConfig
    n: int
    max_tokens: int
    seed: int
    stop: list[str]
    emit: Callable[[dict], None]
    logprobs: bool = False
    top_n: int = 0
    format: ChatFormat = PLAIN  # how the text divides into reasoning and content
    scope: str = MODEL  # where the prompt left the response (chatformat.prompt_scope)
    cache_prompt: bool = True  # reuse the longest cached prefix (False: evaluate it all)
    led_tokens: bool = False  # report each token's depth, gate and top-1 (stream_options)
    grammar: Grammar | None = None  # the output's constraint (grammar, response_format)
    ignore_eos: bool = False  # the end-of-generation tokens are never picked
    tools: ToolSyntax | None = None  # the reply may call tools written in this syntax
    cached: int = 0  # prompt tokens reused from the prompt cache (usage.cached_tokens)
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    first_token: bool = False


@dataclass
class Choice:
    """One running choice of a request in its slot."""

    work: Work
    index: int
    seq: Sequence
    text: TextStream
    split: object  # the chat format's splitter
    calls: ToolStream | None = None  # the content's tool calls (work.tools)
    tool_calls: list[ToolCall] = field(default_factory=list)
    seen: int = 0
    t_last: float = 0.0
    logprobs: list[dict] = field(default_factory=list)
    led_tokens: list[dict] = field(default_factory=list)


class ServeEngine(Engine):
    """The engine with the top log-probabilities a request asks for (``top_n[slot]``) and,
    for the slots in ``explain``, each accepted token's exploration facts (``steps[slot]``:
    the chance the step explored, the final layer's top candidates and their probabilities),
    read from the final logits already at hand: no randomness is drawn, no token changes.
    Tokens get their log-probabilities only in the slots of ``scored`` (requests that asked
    for logprobs) and ``explain``: the others skip a full-vocabulary softmax per token."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, logprobs=True, batch_invariant=True, **kwargs)
        self.scored: set[int] = set()
        self.top_n: dict[int, int] = {}
        self.top: dict[int, list[list[tuple[int, float]]]] = {}
        self.explain: set[int] = set()
        self.steps: dict[int, list[tuple[float | None, list[tuple[int, float]]]]] = {}

    def wants_logprobs(self, s: Sequence) -> bool:
        return s.slot in self.scored or s.slot in self.explain

    def _accept(self, s: Sequence, tok: int, depth: int | None, final: np.ndarray | None,
                temperature: float) -> None:
        before = len(s.tokens)
        explain = final is not None and s.slot in self.explain
        if explain:  # before the token updates the thinking scope the step was picked in
            cfg = self._cfg(s)
            chance = cfg.unit.explore_chance(s, cfg, final)
        super()._accept(s, tok, depth, final, temperature)
        if final is None or len(s.tokens) == before:
            return
        k = self.top_n.get(s.slot, 0)
        if k:
            cand = top_candidates(final, k)
            lps = log_probs_at(final, cand, temperature)
            self.top.setdefault(s.slot, []).append(list(zip(cand.tolist(), lps.tolist())))
        if explain:
            cand = top_candidates(final, LED_TOP)
            ps = probs_at(final, cand, temperature)
            self.steps.setdefault(s.slot, []).append(
                (chance, list(zip(cand.tolist(), ps.tolist()))))

    def cached(self, slot: int) -> int:
        """How many tokens the KV cache of ``slot`` holds."""
        return len(self._cached.get(slot, []))

    def common_prefix(self, slot: int, tokens: list[int]) -> int:
        """How many leading ``tokens`` the KV cache of ``slot`` already holds."""
        n = 0
        for a, b in zip(self._cached.get(slot, []), tokens):
            if a != b:
                break
            n += 1
        return n


def choose_slot(free: set[int], prompt: int, common: dict[int, int], cached: dict[int, int],
                released: dict[int, int], busy: set[int]) -> int:
    """The free slot for a prompt of ``prompt`` tokens: the one whose cache holds the longest
    prefix of it (``common``) when that is more than CACHE_HIT of the prompt (a conversation
    going on, a long shared prefix); otherwise an empty slot (``cached`` 0), the one that
    leaves the fewest runs of consecutive slots among ``busy`` and itself (llama.cpp
    evaluates each run as its own ubatch), else the least recently ``released`` one: a new
    prompt keeps other conversations' caches while it can. Ties: the lowest slot."""
    best = max(sorted(free), key=lambda s: common[s])
    if prompt and common[best] > CACHE_HIT * prompt:
        return best
    empty = sorted(s for s in free if not cached[s])
    if empty:
        return min(empty, key=lambda s: _runs(busy | {s}))
    return min(sorted(free), key=lambda s: released.get(s, -1))


def _runs(slots: set[int]) -> int:
    """How many runs of consecutive numbers ``slots`` makes."""
    return sum(1 for s in slots if s - 1 not in slots)


class Scheduler:
    """Continuous batching across requests on one engine with ``parallel`` slots."""

    def __init__(self, engine: ServeEngine, *, parallel: int, max_queue: int,
                 metrics: Metrics, prefill_chunk: int | None = PREFILL_CHUNK) -> None:
        if prefill_chunk is not None and prefill_chunk < 1:
            raise LedError(f"`prefill_chunk` must be >= 1, got {prefill_chunk}")
        self.engine = engine
        self.prefill_chunk = prefill_chunk
        self._per_token: float | None = None  # seconds a prompt token took in recent chunks
        self._last_chunk = PREFILL_LEAST  # the auto chunk of the turn before
        self.parallel = parallel
        self.max_queue = max_queue
        self.metrics = metrics
        self.queue: deque[Work] = deque()
        self.running: dict[int, Choice] = {}
        self.free = set(range(parallel))
        # slot -> when a finished request last gave it back (a count): its cache's age
        self._released: dict[int, int] = {}
        self._releases = itertools.count()
        self._claimed = 0  # slots of requests taken from the queue, not yet in ``free``'s count
        self._cv = threading.Condition()
        self._stopping = False
        self._draining = False  # shutting down: no new work; what runs has until the deadline
        self._deadline: threading.Timer | None = None
        self._admits: deque[Work] = deque()  # taken from the queue, prompts to evaluate
        # the prompts being evaluated, together (one llama_decode per turn for all of them)
        self._fills: list[tuple[Work, int, Fill]] = []
        # evaluated prompts (work, slot) held back while nothing runs and more prompts wait:
        # they start together, in one batch, instead of each alone while the next loads
        self._ready: list[tuple[Work, int]] = []
        self.failure: str | None = None  # why the decode thread died (then /health says 503)
        self._thread = threading.Thread(target=self._run, name="led-decode", daemon=True)

    # -- the request side (event loop thread) ---------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, work: Work) -> None:
        """Queue ``work``; once the decode thread has died, answer it at once with a 500."""
        with self._cv:
            if self.failure is not None:
                work.emit({"error": self.failure, "status": 500})
                return
            if self._stopping or self._draining:
                raise QueueFull("the server is shutting down")
            waiting = self._waiting([*self.queue, work])
            if waiting > self.max_queue:
                raise QueueFull(f"no free slot and {waiting - 1} requests waiting for one "
                                f"(the server's max_queue {self.max_queue})")
            self.queue.append(work)
            self.metrics.queue.set(len(self.queue))
            self._cv.notify()

    def cancel(self, work: Work) -> None:
        """The client left: drop the request before the next step."""
        with self._cv:
            work.cancelled = True
            self._cv.notify()

    def drain(self, grace: float) -> None:
        """Shutdown has begun: refuse new work, let what runs finish for ``grace`` seconds,
        then end everything left with a "shutting down" error (503), while the handlers can
        still answer it."""
        with self._cv:
            if self._draining:
                return
            self._draining = True
        self._deadline = threading.Timer(grace, self._expire)
        self._deadline.daemon = True
        self._deadline.start()

    def _expire(self) -> None:
        """The grace is over: answer every request now (503), even one whose prompt is still
        being evaluated (the decode thread only sees the flag after that step)."""
        with self._cv:
            self._stopping = True
            works = {id(c.work): c.work for c in list(self.running.values())}
            works.update((id(w), w) for w in [*self.queue, *self._admitting()])
            self._cv.notify()
        for work in works.values():
            work.emit({"error": "the server is shutting down", "status": 503})

    def stop(self) -> None:
        """Cancel everything queued or running and join the decode thread: it may be inside a
        long prompt evaluation, and the engine must not be freed under it."""
        if self._deadline is not None:
            self._deadline.cancel()
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(10)
        if self._thread.is_alive():
            print("led-local serve: waiting for the prompt evaluation in progress to end",
                  file=sys.stderr, flush=True)
            self._thread.join()

    def _admitting(self) -> list[Work]:
        """The requests taken from the queue that have not started: their prompts waiting,
        being evaluated, or evaluated and held back (``_ready``)."""
        return ([w for w, _ in self._ready] + [w for w, _, _ in self._fills]
                + list(self._admits))

    def busy(self) -> int:
        return self.parallel - len(self.free)

    def _waiting(self, works: list[Work]) -> int:
        """How many of ``works`` (in queue order) would still wait once the free slots are
        filled: the queue's length as ``--max-queue`` means it (called under the lock)."""
        room = len(self.free) - self._claimed
        live = [w for w in works if not w.cancelled]
        for i, work in enumerate(live):
            if work.n > room:
                return len(live) - i
            room -= work.n
        return 0

    # -- the decode thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a bug, not a request's fault: every request is answered
            self._fail(f"the decode thread stopped: {type(e).__name__}: {e}")
            raise

    def _fail(self, message: str) -> None:
        """The decode thread is dying: answer what runs, waits or is being admitted with a
        500 now, and every later request at once (``submit``); /health reports it."""
        with self._cv:
            self.failure = message
            works = {id(c.work): c.work for c in self.running.values()}
            works.update((id(w), w) for w in [*self.queue, *self._admitting()])
            self.running.clear()
            self.queue.clear()
        for work in works.values():
            work.emit({"error": message, "status": 500})

    def _loop(self) -> None:
        """Each turn: take what fits from the queue, evaluate one chunk of the prompts being
        admitted (``prefill_chunk`` tokens in all, in one batch), then one decode step of the
        running choices; so a long prompt delays a running stream's next token by one chunk,
        not by its whole evaluation, and a shutdown stops it between chunks. While nothing
        runs, prompts taken together start together once all are evaluated (whole batches, no
        stream waiting): the first decode steps then carry every one of them, as
        llama-server's do."""
        while True:
            with self._cv:
                while not (self._stopping or self.queue or self.running or self._admits
                           or self._fills or self._ready):
                    self._cv.wait()
                if self._stopping:
                    break
                self._admits.extend(self._take())
            self._prefill()
            if self._ready and not self.running and not self._fills and not self._admits:
                with self._cv:  # what arrived meanwhile joins them
                    self._admits.extend(self._take())
            if self._ready and (self.running or (not self._fills and not self._admits)):
                self._start_ready()
            self._reap()
            if self.running:
                self._step()
        works = {id(c.work): c.work for c in self.running.values()}
        works.update((id(w), w) for w in [*self.queue, *self._admitting()])
        for c in list(self.running.values()):
            self._end(c, "cancelled")
        for fill in list(self._fills):
            self._drop_fill(fill)
        for work, first in self._ready:
            self._release(first, work)
        self._ready.clear()
        self.queue.clear()
        self._admits.clear()
        for work in works.values():
            work.emit({"error": "the server is shutting down", "status": 503})

    def _take(self) -> list[Work]:
        """Queued requests that fit the free slots, in order (cancelled ones dropped)."""
        out: list[Work] = []
        room = len(self.free) - self._claimed
        while self.queue:
            work = self.queue[0]
            if work.cancelled:
                self.queue.popleft()
                continue
            if work.n > room:
                break
            room -= work.n
            self._claimed += work.n
            out.append(self.queue.popleft())
        self.metrics.queue.set(len(self.queue))
        return out

    def _prefill(self) -> None:
        """Evaluate the next chunk of every admitted prompt, all in one llama_decode (each
        slot's cache as if its prompt were evaluated alone); finished prompts' choices join
        the running ones."""
        while self._admits:
            work = self._admits.popleft()
            if work.cancelled:  # it left while waiting for the prompt before it
                with self._cv:
                    self._claimed -= work.n
                continue
            self._begin(work)
        for fill in [f for f in self._fills if f[0].cancelled]:
            self._drop_fill(fill)
        if not self._fills:
            return
        size = self._chunk()
        start, t0 = sum(f.done for _, _, f in self._fills), time.perf_counter()
        try:
            self.engine.advance_fills([f for _, _, f in self._fills], size)
        except Exception as e:  # a failed decode: these requests, never the server
            for fill in list(self._fills):
                self._drop_fill(fill)
                fill[0].emit({"error": f"evaluating the prompt failed: {e}"})
            return
        done = sum(f.done for _, _, f in self._fills)
        if done > start:
            per = (time.perf_counter() - t0) / (done - start)
            self._per_token = per if self._per_token is None else 0.5 * (self._per_token + per)
        self._ready += [(work, first) for work, first, fill in self._fills if fill.finished]
        self._fills = [f for f in self._fills if not f[2].finished]

    def _start_ready(self) -> None:
        """Start the evaluated prompts (those whose client has left give their slots back)."""
        ready, self._ready = self._ready, []
        for work, first in ready:
            if work.cancelled:
                self._release(first, work)
            else:
                self._start(work, first)

    def _chunk(self) -> int | None:
        """Prompt tokens to evaluate this turn: ``prefill_chunk``, or (auto) the whole batch
        when no stream is waiting for its next token, otherwise as many as the recent speed
        of prompt evaluation gets through in PREFILL_SECONDS (at least PREFILL_LEAST, at most
        twice the chunk before). The logits are the same whatever the chunks (tested), so
        timing never changes a reply."""
        if self.prefill_chunk is not None:
            return self.prefill_chunk
        if not self.running:
            return None
        if self._per_token is None:
            return PREFILL_LEAST
        # at most twice the chunk before: a speed measured on the whole batch (cheaper per
        # token than a small chunk) or while the machine was idle must not overshoot at once
        n = min(2 * self._last_chunk, max(PREFILL_LEAST, int(PREFILL_SECONDS / self._per_token)))
        self._last_chunk = n
        return n

    def _begin(self, work: Work) -> None:
        """Reserve the free slot that caches most of ``work``'s prompt and start loading the
        prompt minus its last token there."""
        eng = self.engine
        prompt = work.tokens[:-1]
        common = {s: eng.common_prefix(s, prompt) for s in range(self.parallel)}
        busy = (set(self.running) | {f[1] for f in self._fills}
                | {slot for _, slot in self._ready})
        first = choose_slot(self.free, len(prompt) if work.cache_prompt else 0, common,
                            {s: eng.cached(s) for s in self.free}, self._released, busy)
        if not work.cache_prompt:
            eng.free(first)
        else:
            # another slot, free or busy, may hold a longer prefix (the chat template's
            # opening, a system prompt and tools that many requests share): copy its cache
            # when that takes less time than evaluating the extra tokens would
            source = max(common, key=common.get)
            if self._worth_copying(common[source] - common[first]):
                eng.fork(source, first)
        with self._cv:
            self.free.discard(first)
            self._claimed -= 1
        try:
            fill = eng.begin_fill(first, work.tokens[:-1])
        except Exception as e:  # a prompt that does not fit: this request
            self._release(first, work)
            work.emit({"error": str(e) if isinstance(e, LedError) else
                       f"evaluating the prompt failed: {e}"})
            return
        work.cached = fill.reused
        self._fills.append((work, first, fill))

    def _worth_copying(self, tokens: int) -> bool:
        """Whether copying a slot's KV stream (``Engine.copy_seconds``) takes less time than
        evaluating ``tokens`` prompt tokens at the speed of the recent chunks (unknown before
        the first prompt, when no cache is there to copy either)."""
        return (tokens > 0 and self._per_token is not None
                and tokens * self._per_token > self.engine.copy_seconds())

    def _release(self, first: int, work: Work) -> None:
        """Give back a request's reserved slot (emptied) and its other claimed slots."""
        self.engine.free(first)
        with self._cv:
            self.free.add(first)
            self._claimed -= work.n - 1

    def _drop_fill(self, fill: tuple[Work, int, Fill]) -> None:
        self._fills = [f for f in self._fills if f is not fill]  # by identity: Work is a dataclass
        self._release(fill[1], fill[0])

    def _start(self, work: Work, first: int) -> None:
        """The prompt is in slot ``first``: fork it for each choice and start them."""
        eng = self.engine
        slots = [first] + sorted(self.free)[:work.n - 1]
        with self._cv:
            self.free.difference_update(slots)
            self._claimed -= work.n - 1
        now = time.perf_counter()
        for i, slot in enumerate(slots):
            if slot != first:
                eng.fork(first, slot)
            seq = eng.new_sequence(slot, seed=(work.seed,) if i == 0 else (work.seed, i),
                                   max_tokens=work.max_tokens, cfg=work.cfg, prompt=work.tokens,
                                   grammar=work.grammar, ignore_eos=work.ignore_eos)
            seq.pending, seq.n_past = work.tokens[-1], len(work.tokens) - 1
            eng.top_n[slot] = work.top_n
            if work.logprobs or work.top_n:
                eng.scored.add(slot)
            eng.top[slot] = []
            eng.steps[slot] = []
            if work.led_tokens:
                eng.explain.add(slot)
            split = work.format.splitter(scope=work.scope)
            calls = ToolStream(work.tools) if work.tools is not None else None
            self.running[slot] = Choice(work, i, seq, TextStream(work.stop), split, calls,
                                        t_last=now)
        self.metrics.busy.set(self.busy())
        self.metrics.tokens_in.inc(len(work.tokens))

    def _reap(self) -> None:
        for c in [c for c in self.running.values() if c.work.cancelled]:
            self._end(c, "cancelled")

    def _step(self) -> None:
        choices = [self.running[s] for s in sorted(self.running)]
        try:
            self.engine.step([c.seq for c in choices])
        except Exception as e:  # a failed decode ends these requests, never the server
            for c in choices:
                c.work.emit({"error": f"decoding failed: {e}"})
                self._end(c, "error")
            return
        now = time.perf_counter()
        for c in choices:
            self._collect(c, now)

    def _collect(self, c: Choice, now: float) -> None:
        """Turn a choice's new tokens into released text; end it when it is done."""
        rt, seq = self.engine.rt, c.seq
        new = seq.tokens[c.seen:]
        tops = self.engine.top.get(seq.slot, [])
        steps = self.engine.steps.get(seq.slot, [])
        text = ""
        for k, tok in enumerate(new, start=c.seen):
            data = rt.token_bytes(tok)
            text += c.text.feed(data)
            if c.work.logprobs or c.work.top_n:
                c.logprobs.append(self._entry(tok, data, seq.logprobs[k],
                                              tops[k] if k < len(tops) else []))
            if c.work.led_tokens and k < len(steps):
                c.led_tokens.append(self._led_entry(data, seq.depths[k], *steps[k]))
            if c.text.stopped:
                seq.finish_reason = "stop"
                break
        if new:
            if not c.work.first_token:
                c.work.first_token = True
                self.metrics.ttft.observe(now - c.work.arrived)
            else:
                self.metrics.token_latency.observe((now - c.t_last) / len(new))
            c.t_last = now
            self.metrics.tokens_out.inc(len(new))
        c.seen = len(seq.tokens)
        if seq.done:
            text += c.text.finish()
        self._send(c, text, final=seq.done)
        if seq.done:
            self.metrics.explored.inc(seq.explored)
            self._end(c, seq.finish_reason)

    def _entry(self, tok: int, data: bytes, logprob: float,
               top: list[tuple[int, float]]) -> dict:
        rt = self.engine.rt
        return {"token": data.decode("utf-8", "replace"), "logprob": _finite(logprob),
                "bytes": list(data),
                "top": [(rt.token_text(t), _finite(lp), list(rt.token_bytes(t)))
                        for t, lp in top]}

    def _led_entry(self, data: bytes, depth: int | None, chance: float | None,
                   top: list[tuple[int, float]]) -> dict:
        """One token of the ``led_tokens`` extension (docs/serving.md)."""
        rt = self.engine.rt
        return {"token": data.decode("utf-8", "replace"), "depth": depth,
                "gate": None if chance is None else round(chance, 4),
                "p_top1": round(top[0][1], 4),
                "top": [[rt.token_text(t), round(p, 4)] for t, p in top]}

    def _send(self, c: Choice, text: str, *, final: bool) -> None:
        part = c.split.feed(text)
        if final:
            tail = c.split.finish()
            part.reasoning += tail.reasoning
            part.content += tail.content
        if c.calls is not None:
            part.content = c.calls.feed(part.content)
        event: dict = {}
        if final:
            event = self._calls(c, part)
        # log-probabilities travel with the text they produced (held-back text: later)
        if part.reasoning or part.content or event or ((c.logprobs or c.led_tokens) and final):
            c.work.emit({"index": c.index, "reasoning": part.reasoning, "content": part.content,
                         "logprobs": c.logprobs, "led_tokens": c.led_tokens, **event})
            c.logprobs = []
            c.led_tokens = []

    @staticmethod
    def _calls(c: Choice, part) -> dict:
        """At a choice's end: its tool calls (the content held from a call's start, and the
        harmony splitter's messages to functions), or, without tools, that text as content."""
        calls = list(getattr(c.split, "calls", []))
        if c.calls is not None:
            rest, found = c.calls.finish()
            part.content += rest
            calls += found
        if c.work.tools is None:
            part.content += "".join(call.arguments for call in calls)
            return {}
        c.tool_calls = calls
        return {"tool_calls": [call.openai(k) for k, call in enumerate(calls)]} if calls else {}

    def _end(self, c: Choice, reason: str) -> None:
        """Free the choice's slot (its KV stays as a prompt cache) and report its end."""
        slot = c.seq.slot
        del self.running[slot]
        self.free.add(slot)
        self._released[slot] = next(self._releases)
        self.engine.top_n.pop(slot, None)
        self.engine.scored.discard(slot)
        self.engine.top.pop(slot, None)
        self.engine.steps.pop(slot, None)
        self.engine.explain.discard(slot)
        self.metrics.busy.set(self.busy())
        if reason in ("stop", "length"):
            if reason == "stop" and c.tool_calls:
                reason = "tool_calls"
            c.work.emit({"index": c.index, "finish_reason": reason,
                         "completion_tokens": len(c.seq.tokens), "explored": c.seq.explored,
                         "text_len": len(c.text.text)})
