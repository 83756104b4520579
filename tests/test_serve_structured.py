"""Structured output, the rest of the API surface and chunked prefill, on a real server."""

from __future__ import annotations

import json
import threading
import time

import jsonschema
import openai
import pytest
from test_serve import KEY, Server

from led_local.cli import main
from led_local.serve.scheduler import choose_slot

SCHEMA = {"type": "object", "properties": {
    "color": {"type": "string", "enum": ["red", "green", "blue"]},
    "count": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["color", "count"], "additionalProperties": False}
ASK = [{"role": "user", "content": "Pick a color and a count, as JSON."}]
LONG = "The quick brown fox jumps over the lazy dog. " * 120  # ~1,200 tokens


@pytest.fixture(scope="module")
def server(smollm2):
    s = Server(smollm2, "--parallel", "4", "--ctx", "2048", "--api-key", KEY, "--threads", "1")
    yield s
    assert s.stop() == 0


def _post(server: Server, path: str, body: dict) -> tuple[int, dict]:
    status, data = server.request("POST", path, json.dumps(body).encode(),
                                  {"Content-Type": "application/json",
                                   "Authorization": f"Bearer {KEY}"})
    return status, json.loads(data)


@pytest.mark.parametrize("method", ["led", "sample", "greedy"])
@pytest.mark.parametrize("strict", [True, False])
def test_json_schema_output_is_valid(server, method, strict):
    for seed in (1, 2):
        r = server.client().chat.completions.create(
            model="m", messages=ASK, max_tokens=60, seed=seed, extra_body={"method": method},
            response_format={"type": "json_schema", "json_schema": {
                "name": "pick", "schema": SCHEMA, "strict": strict}})
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


def test_json_object_and_grammar(server):
    r = server.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "A JSON object with one key."}],
        max_tokens=200, seed=4, response_format={"type": "json_object"},
        extra_body={"method": "greedy"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut by max_tokens: still a JSON object's beginning
        assert r.choices[0].message.content.lstrip().startswith("{")
    status, body = _post(server, "/v1/completions", {
        "prompt": "Is the sky blue? Answer:", "max_tokens": 10, "seed": 3,
        "grammar": 'root ::= " yes" | " no"'})
    assert status == 200
    assert body["choices"][0]["text"] in (" yes", " no")
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body", [
    {"json_schema": SCHEMA},  # llama-server's top-level field
    {"response_format": {"type": "json_object", "schema": SCHEMA}},  # and its json_object
    {"response_format": {"type": "json_schema", "schema": SCHEMA}},
], ids=["json_schema", "json_object-schema", "json_schema-schema"])
def test_llama_server_s_schema_fields_are_honoured(server, body):
    for seed in (1, 2):
        status, r = _post(server, "/chat/completions",
                          {"messages": ASK, "max_tokens": 60, "seed": seed, **body})
        assert status == 200 and r["choices"][0]["finish_reason"] == "stop"
        jsonschema.validate(json.loads(r["choices"][0]["message"]["content"]), SCHEMA)


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "sound"}}, "response_format"),
    ({"response_format": {"type": "json_object", "schema": 123}}, "response_format.schema"),
    ({"json_schema": {"type": "hiccup"}}, "json_schema"),
    ({"json_schema": SCHEMA, "grammar": 'root ::= "a"'}, "grammar"),
    ({"json_schema": SCHEMA, "response_format": {"type": "json_object"}}, "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "nonsense"}}}}, "response_format"),
    ({"grammar": "root ::= undefined-rule"}, "grammar"),
    ({"best_of": 3}, "best_of"),
])
def test_bad_constraints_are_400(server, extra, param):
    status, body = _post(server, "/v1/chat/completions",
                         {"messages": ASK, "max_tokens": 5, **extra})
    assert status == 400
    assert body["error"]["param"] == param


def test_models_retrieve_and_fingerprint(server):
    client = server.client()
    name = client.models.list().data[0].id
    assert client.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    r = client.chat.completions.create(model="m", messages=ASK, max_tokens=3)
    assert r.system_fingerprint.startswith("fp_")
    chunks = list(client.chat.completions.create(model="m", messages=ASK, max_tokens=3,
                                                 stream=True))
    assert {c.system_fingerprint for c in chunks} == {r.system_fingerprint}


def test_cached_tokens_on_a_shared_prefix(server):
    client = server.client()
    messages = [{"role": "user", "content": LONG[:600]}]
    client.chat.completions.create(model="m", messages=messages, max_tokens=2, seed=1)
    r = client.chat.completions.create(model="m", messages=messages, max_tokens=2, seed=1)
    assert r.usage.prompt_tokens_details.cached_tokens >= r.usage.prompt_tokens - 2


def test_conversations_keep_their_caches(server):
    """As many conversations as slots, each resumed after all of them started: every one
    finds its own cache. A new conversation shares only the chat template's opening with
    the others, so it takes an empty or the least recently used slot instead of the lowest
    slot that holds that opening (which kept one conversation's cache at a time)."""
    client = server.client()
    topics = ["the sea", "mountains", "old clocks", "bread"]  # the server has 4 slots
    talks = [[{"role": "user", "content": f"Tell me about {t}, please. " * 6}] for t in topics]
    first = []
    for talk in talks:
        r = client.chat.completions.create(model="m", messages=talk, max_tokens=2, seed=1)
        first.append(r.usage.prompt_tokens)
        talk += [{"role": "assistant", "content": r.choices[0].message.content},
                 {"role": "user", "content": "And then?"}]
    for talk, n in zip(talks, first):
        r = client.chat.completions.create(model="m", messages=talk, max_tokens=2, seed=1)
        assert r.usage.prompt_tokens_details.cached_tokens >= n - 2, talk[0]["content"]


def test_a_shared_prefix_is_copied_to_a_new_slot(server):
    """Requests that share a long opening (a system prompt, tools) but less than half their
    prompt: each gets a slot of its own, with the shared prefix copied from the slot that
    holds it; the answer is the one evaluated without any cache."""
    client = server.client()
    system = {"role": "system", "content": LONG[:500]}
    asks = [[system, {"role": "user", "content": f"Now tell me about {t}. " * 50}]
            for t in ("rivers", "lamps")]
    r = client.chat.completions.create(model="m", messages=asks[0], max_tokens=2, seed=1)
    kw = {"model": "m", "max_tokens": 8, "seed": 3, "extra_body": {"method": "greedy"}}
    again = client.chat.completions.create(messages=asks[1], **kw)
    # the system prompt is ~110 tokens of ~430; without the copy the slot would hold at
    # most the chat template's opening
    assert 100 <= again.usage.prompt_tokens_details.cached_tokens < again.usage.prompt_tokens / 2
    cold = client.chat.completions.create(
        messages=asks[1], **{**kw, "extra_body": {"method": "greedy", "cache_prompt": False}})
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert again.choices[0].message.content == cold.choices[0].message.content
    # and the first conversation kept its own cache
    first = client.chat.completions.create(model="m", messages=asks[0], max_tokens=2, seed=1)
    assert first.usage.prompt_tokens_details.cached_tokens >= r.usage.prompt_tokens - 2


def test_a_slot_is_chosen_for_its_cache_or_to_keep_others():
    free = {0, 1, 2, 3, 6, 7}
    empty = dict.fromkeys(free, 0)
    # a cache holding more than half the prompt is taken, wherever it is
    assert choose_slot(free, 100, {**empty, 6: 51}, {**empty, 6: 300}, {}, {4, 5}) == 6
    # half is not more than half: a new prompt; the empty slot that makes no hole
    assert choose_slot(free, 100, {**empty, 6: 50}, {**empty, 6: 300}, {}, {4, 5}) == 3
    few = {0: 0, 3: 0, 6: 0}
    assert choose_slot(set(few), 100, few, few, {}, {7}) == 6
    assert choose_slot(set(few), 100, few, few, {}, {1, 2}) == 0
    assert choose_slot(free, 100, empty, empty, {}, set()) == 0
    # no empty slot: the least recently released one, whatever prefix the others share
    full = dict.fromkeys(free, 40)
    released = {0: 7, 1: 3, 2: 9, 3: 5, 6: 4, 7: 8}
    assert choose_slot(free, 100, full, full, released, {4, 5}) == 1
    # without the prompt cache (prompt 0) there is no hit, however much a slot holds
    assert choose_slot(free, 0, {**full, 2: 99}, full, released, set()) == 1


def test_stream_keeps_going_while_a_long_prompt_is_prefilled(server):
    """Chunks of a running stream arrive between the chunks of a long prompt's evaluation
    (counted, not timed): with --prefill-chunk auto (chunks of ~50 ms) a 1,200-token prompt
    takes several chunks on any CPU."""
    client = server.client()
    stream = client.completions.create(model="m", prompt="Count: 1, 2, 3,", max_tokens=150,
                                       seed=1, stream=True, extra_body={"method": "greedy"})
    it = iter(stream)
    next(it)  # the stream runs
    got: list[str] = []
    started = threading.Event()

    def long_request():
        started.set()
        client.completions.create(model="m", prompt=LONG, max_tokens=1, seed=2)

    t = threading.Thread(target=long_request)
    t.start()
    started.wait()
    while t.is_alive():
        try:
            got.append(next(it))
        except StopIteration:
            break
    t.join()
    assert len(got) >= 5  # a blocking prefill would let none through meanwhile


def test_chunked_prefill_gives_the_same_logits(smollm2):
    """A prompt evaluated 64 tokens at a time leaves the same logits, bit for bit, as in
    batches of n_batch: the same tokens for a seed."""
    import numpy as np

    from led_local.decoding.engine import Engine
    from led_local.decoding.methods import DecodeConfig

    with Engine(smollm2, DecodeConfig(method="greedy"), n_ctx=2048, n_seq=1, threads=1,
                batch_invariant=True) as e:
        tokens = e.rt.tokenize(LONG[:1800])
        rows = []
        for limit in (None, 64, 7, 333):
            e.free(0)
            fill = e.begin_fill(0, tokens, logits=True)
            while not fill.advance(limit):
                pass
            rows.append(e.rt.logits(e._prompt_row))
    assert np.array_equal(rows[0], rows[1])


def test_prompts_filled_together_leave_each_cache_as_alone(smollm2):
    """Prompts of different lengths evaluated together (one llama_decode per chunk, slots
    consecutive or not, chunk budgets that split them unevenly) leave each slot's cache as
    its prompt alone does: the next token's logits are the same bit for bit."""
    import numpy as np

    from led_local.decoding.engine import Engine
    from led_local.decoding.methods import DecodeConfig

    with Engine(smollm2, DecodeConfig(method="greedy"), n_ctx=6 * 512, n_seq=6, threads=2,
                batch_invariant=True) as e:
        prompts = [e.rt.tokenize(LONG[:n]) for n in (700, 90, 1300, 333)]
        slots = [0, 1, 3, 5]

        def next_logits() -> np.ndarray:
            e.rt.decode([p[-1] for p in prompts], [len(p) - 1 for p in prompts], slots,
                        [True] * len(slots))
            return np.stack([e.rt.logits(i) for i in range(len(slots))])

        def run(limit, together: bool) -> np.ndarray:
            for s in range(6):
                e.free(s)
            fills = [e.begin_fill(s, p[:-1]) for s, p in zip(slots, prompts)]
            if together:
                while not all(f.finished for f in fills):
                    e.advance_fills(fills[::-1], limit)  # any order in, slot order out
            else:
                for f in fills:
                    while not f.advance(limit):
                        pass
            assert [e.cached_len(s) for s in slots] == [len(p) - 1 for p in prompts]
            return next_logits()

        alone = run(None, False)
        for limit in (None, 5, 64, 301):
            assert np.array_equal(run(limit, True), alone), limit
        assert len({int(np.argmax(r)) for r in alone}) > 1  # the rows differ


def test_share_is_even_and_spends_the_budget():
    from led_local.decoding.engine import share

    assert share([100, 100, 100], 90) == [30, 30, 30]
    assert share([5, 100, 100], 90) == [5, 42, 43]
    assert share([5, 3, 2], 90) == [5, 3, 2]
    assert share([10, 10, 10], 8) == [2, 3, 3]
    assert share([1, 10, 10], 3) == [1, 1, 1]
    for rem, budget in (([7, 1, 40, 3], 11), ([0, 9], 4), ([50] * 7, 64), ([2, 30, 9], 25)):
        got = share(rem, budget)
        assert sum(got) == min(budget, sum(rem)) and all(0 <= g <= r for g, r in zip(got, rem))
        open_ = [g for g, r in zip(got, rem) if g < r]  # cut short: even, the largest shares
        assert not open_ or (max(open_) - min(open_) <= 1 and max(got) <= max(open_))


def test_auto_prefill_chunks_follow_the_measured_speed():
    """--prefill-chunk auto: the whole batch while nothing streams; with a stream waiting,
    PREFILL_LEAST tokens until a chunk has been timed, then what takes PREFILL_SECONDS at the
    recent speed, never fewer than PREFILL_LEAST nor more than twice the chunk before; a
    number is taken as given."""
    from led_local.serve import scheduler as sch
    from led_local.serve.metrics import Metrics

    least, budget = sch.PREFILL_LEAST, sch.PREFILL_SECONDS
    s = sch.Scheduler(None, parallel=2, max_queue=4, metrics=Metrics())
    assert s.prefill_chunk is None and s._chunk() is None
    s.running[0] = object()
    assert s._chunk() == least
    s._per_token = budget / (16 * least + 3.5)
    assert [s._chunk() for _ in range(6)] == [2 * least, 4 * least, 8 * least, 16 * least,
                                              16 * least + 3, 16 * least + 3]
    s._per_token = budget / (least - 1) if least > 1 else 2 * budget
    assert s._chunk() == least
    s._per_token = budget / 100
    assert s._chunk() == 2 * least
    fixed = sch.Scheduler(None, parallel=2, max_queue=4, metrics=Metrics(), prefill_chunk=64)
    assert fixed._chunk() == 64
    fixed.running[0] = object()
    assert fixed._chunk() == 64


def test_a_cache_is_copied_when_that_is_quicker_than_evaluating_it(smollm2):
    """The KV bytes a token takes are what llama.cpp's own sequence state grows by per token;
    a copy costs the slot's whole stream at COPY_BYTES_PER_S, and is made for a prefix only
    when evaluating it at the recent prompt speed would take longer."""
    import llama_cpp

    from led_local.decoding.engine import COPY_BYTES_PER_S
    from led_local.decoding.methods import DecodeConfig
    from led_local.serve import scheduler as sch
    from led_local.serve.metrics import Metrics

    with sch.ServeEngine(smollm2, DecodeConfig(method="sample"), n_ctx=4 * 512, n_seq=4,
                         threads=1) as eng:
        per_token = eng.info.kv_bytes_per_token
        assert per_token == 2 * 30 * 2 * 3 * 64  # f16, 30 layers, K and V, 3 KV heads of 64
        sizes = []
        for n in (10, 50):
            eng.free(0)
            tokens = eng.rt.tokenize("one two three four five " * 20)[:n]
            eng.rt.decode(tokens, list(range(n)), [0] * n, [False] * (n - 1) + [True])
            sizes.append(llama_cpp.llama_state_seq_get_size(eng.rt.ctx, 0))
        # the state also writes each cell's position and sequence ids (12 bytes)
        assert 40 * per_token <= sizes[1] - sizes[0] <= 40 * (per_token + 16)
        copy = per_token * 512 / COPY_BYTES_PER_S
        assert eng.copy_seconds() == pytest.approx(copy)
        s = sch.Scheduler(eng, parallel=4, max_queue=4, metrics=Metrics())
        assert not s._worth_copying(1000)  # no prompt timed yet
        s._per_token = copy / 10.5
        assert [s._worth_copying(n) for n in (0, 10, 11)] == [False, False, True]


def test_prompts_that_arrive_together_start_together_and_keep_their_tokens(smollm2):
    """While nothing runs, the prompts taken from the queue are all evaluated before any of
    them starts: the first decode step carries every one (as llama-server's first step
    does), a later arrival joins between chunks, and each reply's tokens are the ones it gets
    alone (a seed's tokens never depend on batching)."""
    import queue as q

    from led_local.decoding.methods import DecodeConfig
    from led_local.serve import scheduler as sch
    from led_local.serve.metrics import Metrics

    with sch.ServeEngine(smollm2, DecodeConfig(method="sample"), n_ctx=4 * 512, n_seq=4,
                         threads=1) as eng:
        batches: list[int] = []
        step = eng.step

        def counting(seqs):
            batches.append(sum(not s.done for s in seqs))
            return step(seqs)

        eng.step = counting
        prompts = [eng.rt.tokenize(f"Question {i}: what is {i} + {i}?") for i in range(4)]

        def run(works_at: list[tuple[int, int]]) -> dict[int, str]:
            """Submit prompt i before step n for each (i, n); each reply's text."""
            got: dict[int, q.Queue] = {i: q.Queue() for i, _ in works_at}
            s = sch.Scheduler(eng, parallel=4, max_queue=4, metrics=Metrics())
            late = [(i, n) for i, n in works_at if n > 0]
            for i, n in works_at:
                if n == 0:
                    s.submit(work(i, got[i]))
            batches.clear()
            if late:
                def joining(seqs, _step=counting):
                    for i, n in list(late):
                        if len(batches) == n:
                            s.submit(work(i, got[i]))
                            late.remove((i, n))
                    return _step(seqs)
                eng.step = joining
            s.start()
            out = {}
            for i in got:
                events = []
                while not events or "finish_reason" not in events[-1]:
                    events.append(got[i].get(timeout=120))
                assert events[-1]["completion_tokens"] == 12, events[-1]
                out[i] = "".join(e.get("content", "") for e in events)
            s.stop()
            eng.step = counting
            return out

        def work(i: int, box) -> sch.Work:
            return sch.Work(tokens=prompts[i], cfg=eng.cfg, n=1, max_tokens=12, seed=i,
                            stop=[], emit=box.put, ignore_eos=True)

        together = run([(0, 0), (1, 0), (2, 0), (3, 0)])
        assert batches[0] == 4 and batches.count(4) == 12, batches
        alone = {i: run([(i, 0)])[i] for i in range(4)}
        assert together == alone
        joined = run([(0, 0), (1, 0), (2, 3)])
        assert batches[:3] == [2, 2, 2] and 3 in batches
        assert joined == {i: alone[i] for i in range(3)}


def test_generate_and_solve_take_a_json_schema(smollm2, tmp_path, capsys):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {
        "answer": {"type": "integer"}}, "required": ["answer"], "additionalProperties": False}))
    main(["generate", str(smollm2), "-p", "What is 2+2? Answer in JSON.", "-n", "40", "-s", "1",
          "--json-schema", str(schema), "--json"], standalone_mode=False)
    text = json.loads(capsys.readouterr().out)["text"]
    assert isinstance(json.loads(text)["answer"], int)
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "a", "question": "What is 3+4?", "answer": "7"}) + "\n")
    out = tmp_path / "run.jsonl"
    main(["solve", str(smollm2), str(problems), "-o", str(out), "-n", "2", "--parallel", "2",
          "--max-tokens", "40", "--json-schema", str(schema)], standalone_mode=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(isinstance(json.loads(r["text"])["answer"], int) for r in records)


def test_sigterm_during_a_long_prefill_stops_between_chunks(smollm2):
    """A shutdown does not wait for a long prompt's whole evaluation: it stops between two
    chunks, the request is answered 503, and the server exits 0 within its grace."""
    s = Server(smollm2, "--parallel", "1", "--ctx", "4096", "--threads", "1",
               "--prefill-chunk", "16", "--api-key", KEY)
    answer: dict = {}

    def long_request():
        try:
            s.client().completions.create(model="m", prompt=LONG * 3, max_tokens=1, seed=2)
            answer["status"] = 200
        except openai.APIStatusError as e:
            answer["status"] = e.status_code
        except openai.APIConnectionError:
            answer["status"] = "closed"

    t = threading.Thread(target=long_request)
    try:
        t.start()
        deadline = time.monotonic() + 60
        while s.health()["slots_busy"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        assert s.stop() == 0
        stopped = time.monotonic() - t0
        t.join(30)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert answer["status"] == 503
    assert stopped < 15  # the grace and a chunk, not ~225 chunks of 16 tokens
