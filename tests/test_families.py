"""LED on the architectures beyond llama: tiny GGUFs of each family (tests/familymodels.py) through
real llama.cpp: what ``info`` says, the doctor's decode and projection checks, recurrent and
hybrid memory across prompts, and GGUF hyperparameters refused before llama.cpp loads them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from familymodels import FAMILIES, write_family

from led_local.cli import main
from led_local.decoding import led
from led_local.decoding.engine import Engine
from led_local.decoding.generate import generate
from led_local.decoding.methods import DecodeConfig
from led_local.decoding.samplers import LEDConfig
from led_local.diagnostics import doctor
from led_local.errors import LedError
from led_local.llama import native
from led_local.llama.gguf_info import GRAPH_ARCHITECTURES, inspect_model
from led_local.llama.projection import resolve_projection

N_LAYER = 5  # glm4's last block is its NextN layer: 4 trunk blocks
MEMORY = {"mamba": "recurrent", "nemotron_h": "hybrid"}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    made = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = write_family(tmp_path_factory.mktemp(arch) / f"{arch}.gguf", arch,
                                      n_layer=N_LAYER)
        return made[arch]

    return get


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_info_names_the_trunk_and_the_depths_led_reads(family, arch):
    r = run("info", family(arch), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    trunk = N_LAYER - 1 if arch == "glm4" else N_LAYER
    assert out["architecture"] == arch and out["led_supported"]
    assert out["blocks"] == trunk and out["nextn_layers"] == N_LAYER - trunk
    assert out["memory"] == MEMORY.get(arch, "attention")
    name = "nemotron_h_block_out" if arch == "nemotron_h" else "l_out"
    # the default 8 depths do not fit a tiny model; the largest that does reads from block 0
    assert out["led_depths"] is None
    info = inspect_model(family(arch))
    assert info.led_hidden_indices(trunk - 1) == list(range(trunk - 2, 0, -1))
    assert info.block_output == name


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_greedy_led_agrees_on_every_capture_path_and_the_head_matches(family, arch):
    info = inspect_model(family(arch))
    decode = doctor.decode_check(info, threads=1)
    assert decode.ok, decode.detail
    projection = doctor.projection_check(info, threads=1)
    assert projection.ok, projection.detail
    assert projection.value["top1_mismatches"] == 0


GRAPH_FAMILIES = sorted(a for a in FAMILIES if a in GRAPH_ARCHITECTURES)


@pytest.mark.parametrize("arch", GRAPH_FAMILIES)
def test_greedy_led_tokens_identical_host_and_graph(family, arch):
    """The in-graph projection (patch 0002) gives the host's greedy LED tokens and depths."""
    if native.projection_patch_version() is None:
        pytest.skip("stock llama.cpp build: no in-graph projection patch")
    runs = []
    for choice in ("host", "graph"):
        with Engine(family(arch), _led_cfg(4), n_ctx=256, threads=1,
                    projection=choice) as engine:
            assert (engine.graph is not None) == (choice == "graph")
            r = generate(engine, engine.rt.tokenize("hello world, the answer"), max_tokens=12,
                         seed=0)
            runs.append((r.tokens, r.depths))
    assert runs[0] == runs[1] and any(d is not None for d in runs[0][1])


def test_graph_projection_refused_where_the_patch_does_not_apply(family):
    info = inspect_model(family("smollm3"))
    assert resolve_projection("auto", info) == "host"
    if native.projection_patch_version() is not None:
        with pytest.raises(LedError, match="does not handle architecture 'smollm3'"):
            resolve_projection("graph", info)


def test_nextn_layers_are_never_read(family):
    info = inspect_model(family("glm4"))
    assert (info.n_layer, info.n_nextn) == (N_LAYER - 1, 1)
    # LED's deepest depth is the output of the trunk's second-to-last block
    assert max(info.led_hidden_indices(3)) == info.n_layer - 2


def _led_cfg(depths: int) -> DecodeConfig:
    return DecodeConfig(method=led.NAME, temperature=0.0, think_end="",
                        led=LEDConfig(temperature=0.0, depths=depths, exploit=False))


@pytest.mark.parametrize("arch", ["nemotron_h", "mamba"])
def test_recurrent_memory_gives_each_prompt_its_own_tokens(family, arch):
    """A second prompt that shares the first's prefix (and one that cuts it back) gives the
    same tokens on a used engine as on a fresh one: the state is never partially reused."""
    path = family(arch)
    cfg = _led_cfg(3)
    texts = ["hello world, the answer is", "hello world, the sum of two", "hello"]
    alone = []
    for text in texts:
        with Engine(path, cfg, n_ctx=256, threads=1) as engine:
            alone.append(generate(engine, engine.rt.tokenize(text), max_tokens=8, seed=0).tokens)
    with Engine(path, cfg, n_ctx=256, threads=1) as engine:
        assert engine.rt.recurrent
        again = [generate(engine, engine.rt.tokenize(t), max_tokens=8, seed=0).tokens
                 for t in texts]
        # a prompt that extends what the slot holds reuses it
        first = engine.rt.tokenize(texts[0])
        generate(engine, first, max_tokens=4, seed=0)
        longer = first + engine.rt.tokenize(" two", bos=False)
        assert generate(engine, longer, max_tokens=4, seed=0).tokens
    assert again == alone


@pytest.mark.parametrize("arch", ["nemotron_h", "mamba"])
def test_solve_with_several_problems_on_recurrent_memory(family, arch, tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{i}", "question": q, "answer": "4"}) + "\n"
                                for i, q in enumerate(["two plus two", "the sum of two",
                                                       "what is two plus two"])))
    out = tmp_path / "r.jsonl"
    r = run("solve", family(arch), problems, "-o", out, "-n", "2", "--max-tokens", "6",
            "--parallel", "2", "--threads", "1", "--led-depths", "3")
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and all(rec["n_tokens"] >= 1 and "error" not in rec for rec in records)


def test_serve_answers_a_second_request_on_hybrid_memory(family):
    from test_serve import KEY, Server

    s = Server(family("nemotron_h"), "--parallel", "2", "--ctx", "256", "--api-key", KEY,
               "--threads", "1", "--led-depths", "3")
    try:
        client = s.client()
        msgs = [{"role": "user", "content": "hello world"}]
        a = client.chat.completions.create(model="m", messages=msgs, max_tokens=6, seed=1)
        msgs += [{"role": "assistant", "content": a.choices[0].message.content},
                 {"role": "user", "content": "the answer"}]
        b = client.chat.completions.create(model="m", messages=msgs, max_tokens=6, seed=1)
        assert b.usage.completion_tokens >= 1
        assert s.health()["status"] == "ok"
    finally:
        assert s.stop() == 0


DIE = ("from led_local.serve import scheduler\n"
       "def reap(self):\n"
       "    raise RuntimeError('boom')\n"
       "scheduler.Scheduler._reap = reap\n"
       "from led_local.cli import main; main()")


def test_a_dead_decode_thread_is_reported_and_answered(family):
    from test_serve import KEY, Server

    s = Server(family("qwen3moe"), "--parallel", "2", "--ctx", "256", "--api-key", KEY,
               "--threads", "1", "--led-depths", "3", code=DIE)
    try:
        body = json.dumps({"model": "m", "max_tokens": 4,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        for _ in range(2):  # the request that met the failure, then one after it
            status, data = s.request("POST", "/v1/chat/completions", body, auth)
            assert status == 500
            assert "decode thread stopped" in json.loads(data)["error"]["message"]
        status, data = s.get("/health")
        assert status == 503 and json.loads(data)["error"]["code"] == "decode_thread_failed"
    finally:
        s.stop()


def test_kv_heads_not_dividing_heads_is_refused_before_llama_cpp(tmp_path):
    bad = write_family(tmp_path / "bad.gguf", "qwen3moe", n_layer=2,
                       keys={"attention.head_count_kv": 3})
    for args in (["info", bad], ["generate", bad, "-p", "hello", "--raw", "-n", "2"]):
        r = run(*args)
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and "'qwen3moe.attention.head_count_kv' (3) must divide" in lines[0]


@pytest.mark.parametrize(("keys", "named"), [
    ({"expert_used_count": 5}, "expert_used_count"),
    ({"rope.dimension_count": 32}, "rope.dimension_count"),
    ({"nextn_predict_layers": 2}, "nextn_predict_layers"),
    ({"attention.key_length": 0, "attention.head_count": 3, "attention.head_count_kv": 1},
     "embedding_length"),
])
def test_other_hyperparameters_that_would_abort_are_refused(tmp_path, keys, named):
    bad = write_family(tmp_path / "bad.gguf", "qwen3moe", n_layer=2, keys=keys)
    r = run("info", bad)
    assert r.exit_code == 2 and f"qwen3moe.{named}" in r.output, r.output
