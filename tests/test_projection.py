"""The in-graph projection (patches/0002) against the host projection: same logits within
quantization noise, same greedy LED tokens, and the old-build behaviour without the patch."""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import write_tiny_llama

from led_local.decoding.engine import Engine
from led_local.decoding.methods import DecodeConfig
from led_local.decoding.samplers import LEDConfig, log_probs_at
from led_local.errors import LedError
from led_local.llama import native, projection
from led_local.llama.capture import LayerInputCapture
from led_local.llama.gguf_info import inspect_model
from led_local.llama.head import LMHead
from led_local.llama.projection import GraphProjection, resolve_projection
from led_local.llama.runtime import Runtime

needs_patch = pytest.mark.skipif(native.projection_patch_version() is None,
                                 reason="llama.cpp build without patches/0002")
PROMPT = "The capital of France is Paris. The capital of Italy is"


LAST = 4  # output rows per test decode


def _both(path, layers, *, norm: bool, temperature: float, k: int | None):
    """One decode of PROMPT (its last LAST tokens outputs) with the graph projection and the
    layer-input capture on the same context: (graph, runtime, states (n, m, n_embd), n);
    states[row] is batch row ``row``'s, for the output rows n - LAST .. n - 1."""
    info = inspect_model(path)
    rt = Runtime(info.path, n_ctx=256, n_batch=128, n_outputs_max=LAST, info=info)
    cap = LayerInputCapture(layers, info.n_embd)
    cap.attach(rt)
    graph = GraphProjection(info, layers, norm=norm, temperature=temperature, candidates=k)
    graph.attach(rt)
    tokens = rt.tokenize(PROMPT)
    n = len(tokens)
    cap.begin(np.arange(n))
    rt.decode(tokens, range(n), [0] * n, [i >= n - LAST for i in range(n)])
    return graph, rt, cap.collect(), n


@needs_patch
@pytest.mark.parametrize("norm", [False, True])
def test_full_logits_match_host_on_tiny_model(tmp_path, norm):
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=6, seed=5)
    info = inspect_model(tiny.path)
    layers = [4, 3, 1]
    graph, rt, states, n = _both(tiny.path, layers, norm=norm, temperature=0.6, k=None)
    head = LMHead(info)
    for row in range(n - LAST, n):
        want = head.project(states[row], norm=norm)
        got = graph.logits(row)
        assert got.shape == (len(layers), info.n_vocab)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    head.close()
    rt.close()


@needs_patch
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
@pytest.mark.parametrize(("temperature", "norm"), [(0.6, True), (0.0, False)])
def test_candidate_logprobs_match_host(request, model, temperature, norm):
    """log P_j at the candidates from the graph's few values equals the host's full softmax
    up to float32 rounding of the normaliser (and, with the final norm, computed by ggml in
    the graph and by numpy on the host, of the norm: up to 1e-4 in the logits)."""
    path = request.getfixturevalue(model)
    info = inspect_model(path)
    layers = info.led_hidden_indices(8)
    graph, rt, states, n = _both(path, layers, norm=norm, temperature=temperature, k=8)
    head = LMHead(info)
    for row in range(n - LAST, n):
        final = rt.logits(row)
        cand = np.argsort(-final, kind="stable")[:8]
        used, got = graph.logprobs(row, cand, final)
        np.testing.assert_array_equal(used, cand)
        want = log_probs_at(head.project(states[row], norm=norm), cand, temperature)
        assert got.shape == want.shape == (len(layers), 8)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3 if norm else 1e-4)
    head.close()
    rt.close()


@needs_patch
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
@pytest.mark.parametrize("norm", [True, False])
def test_depth_logits_match_the_host(request, model, norm):
    """The full (rows, d-1, V) depth logits equal the host projection of the same states: both
    multiply the states and what the product's 8-bit rounding leaves of them, with ggml's
    kernels on the same bytes (identical without the final norm). With it, the norm is
    computed by ggml in the graph and by numpy on the host: float32 rounding apart
    (measured up to 8e-5)."""
    path = request.getfixturevalue(model)
    info = inspect_model(path)
    layers = info.led_hidden_indices(8)
    graph, rt, states, n = _both(path, layers, norm=norm, temperature=0.6, k=None)
    head = LMHead(info)
    for row in range(n - LAST, n):
        want = head.project(states[row], norm=norm)
        got = graph.logits(row)
        assert got.shape == (len(layers), info.n_vocab)
        if norm:
            assert np.abs(got - want).max() <= 5e-4, model
        else:
            assert np.array_equal(got, want), model
        assert (np.argmax(got, axis=1) == np.argmax(want, axis=1)).all()
    head.close()
    rt.close()


def _led_tokens(path, projection_choice: str, *, temperature: float, exploit: bool, n: int):
    cfg = DecodeConfig(method="led", temperature=temperature,
                       led=LEDConfig(temperature=temperature, exploit=exploit), think_end="")
    with Engine(path, cfg, n_ctx=256, projection=projection_choice) as engine:
        assert (engine.graph is not None) == (projection_choice == "graph")
        tokens = engine.rt.tokenize(PROMPT)
        engine.prefill(0, tokens)
        seq = engine.new_sequence(0, seed=(7,), max_tokens=n)
        engine.start(seq, len(tokens))
        while not seq.done:
            engine.step([seq])
        return seq.tokens, seq.depths


# Greedy LED (T = 0, --no-exploit, d = 8, k = 8, no final norm, everything in scope) after
# PROMPT: its first 16 tokens as measured on the CPU (x86-64, host and graph alike). On a GPU
# both projections must reproduce them (GPU kernels may diverge later).
CPU_REFERENCE = {
    "smollm2": [7268, 30, 378, 3575, 282, 7476, 314, 28030, 30, 198, 198, 504, 2988, 314, 42,
                216],
    "gemma3": [13706, 236761, 669, 5279, 529, 9405, 563, 15687, 236761, 669, 5279, 529, 506,
               3640, 4184, 563],
}


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_greedy_led_tokens_identical_host_and_graph(request, model):
    """Both projections give the CPU reference's first 16 greedy LED tokens on any device;
    on the CPU they agree token for token and depth for depth."""
    path = request.getfixturevalue(model)
    host = _led_tokens(path, "host", temperature=0.0, exploit=False, n=24)
    assert host[0][:16] == CPU_REFERENCE[model]
    assert any(d is not None for d in host[1])
    if native.projection_patch_version() is None:
        return
    graph = _led_tokens(path, "graph", temperature=0.0, exploit=False, n=24)
    assert graph[0][:16] == CPU_REFERENCE[model]
    if not projection.offloaded():
        assert graph == host


@needs_patch
def test_seeded_led_tokens_identical_host_and_graph(smollm2):
    host = _led_tokens(smollm2, "host", temperature=0.6, exploit=True, n=24)
    graph = _led_tokens(smollm2, "graph", temperature=0.6, exploit=True, n=24)
    assert graph == host


@needs_patch
def test_graph_falls_back_to_its_own_top_k_when_a_tie_hides_a_candidate(smollm2):
    info = inspect_model(smollm2)
    graph, rt, _, n = _both(smollm2, info.led_hidden_indices(4), norm=False, temperature=0.6,
                            k=2)
    final = rt.logits(n - 1)
    worst = np.argsort(final)[:2]  # certainly not among the graph's top 10
    used, logp = graph.logprobs(n - 1, worst, final)
    np.testing.assert_array_equal(used, np.argsort(-final, kind="stable")[:2])
    assert logp.shape == (3, 2) and np.isfinite(logp).all()
    rt.close()


def test_old_build_auto_picks_host_and_graph_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "projection_patch_version", lambda: None)
    assert resolve_projection("auto") == "host"
    assert resolve_projection("host") == "host"
    assert projection.projection_path().startswith("host")
    with pytest.raises(LedError, match="make install"):
        resolve_projection("graph")
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=4, seed=2)
    cfg = DecodeConfig(method="led", led=LEDConfig(depths=3))
    with pytest.raises(LedError, match="make install"):
        Engine(tiny.path, cfg, n_ctx=64, projection="graph")
    with Engine(tiny.path, cfg, n_ctx=64) as engine:
        assert engine.graph is None and engine.head is not None


def test_auto_follows_offload(monkeypatch):
    monkeypatch.setattr(native, "projection_patch_version", lambda: 1)
    monkeypatch.setattr(projection, "offloaded", lambda: True)
    assert resolve_projection("auto") == "graph"
    assert projection.projection_path().startswith("graph")
    monkeypatch.setattr(projection, "offloaded", lambda: False)
    assert resolve_projection("auto") == "host"
    with pytest.raises(LedError, match="projection must be one of"):
        resolve_projection("device")


@needs_patch
def test_graph_solve_is_batch_invariant(smollm2, tmp_path):
    """--parallel 1 and 3 give identical records with the in-graph projection (its rows are
    projected together, each output element still an independent dot product)."""
    import json

    from click.testing import CliRunner

    from led_local.cli import main

    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "0", "question": "What is 2 + 3?", "answer": "5"}))
    records = []
    for parallel in ("1", "3"):
        out = tmp_path / f"{parallel}.jsonl"
        r = CliRunner().invoke(main, ["solve", str(smollm2), str(problems), "-o", str(out),
                                      "-n", "3", "--max-tokens", "12", "--parallel", parallel,
                                      "--no-exploit", "-t", "1.0", "--projection", "graph"])
        assert r.exit_code == 0, r.output
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        records.append(sorted(({k: v for k, v in row.items() if k != "time_s"} for row in rows),
                              key=lambda row: (row["problem_id"], row["sample"])))
    assert records[0] == records[1]
    assert any(d is not None for row in records[0] for d in row["led"]["depths"])


@pytest.mark.parametrize(("args", "arch"), [((), "native"), (("CUDA_ARCHITECTURES=90",), "90")])
def test_cuda_build_compiles_for_one_architecture(args, arch):
    """`make install BACKEND=cuda` builds for the building machine's GPU (or the one named)."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["make", "-s", "--no-print-directory", "build-flags", "BACKEND=cuda",
                          *args], cwd=root, capture_output=True, text=True, check=True).stdout
    assert "-DGGML_CUDA=on" in out
    assert f"-DCMAKE_CUDA_ARCHITECTURES={arch}" in out.split()


@needs_patch
def test_dola_reads_the_graphs_full_logits(smollm2):
    """DoLa's premature layers from the in-graph full logits give the host's tokens."""
    import json

    from click.testing import CliRunner

    from led_local.cli import main

    out = {}
    for choice in ("host", "graph"):
        r = CliRunner().invoke(main, ["generate", str(smollm2), "--prompt", PROMPT, "-m", "dola",
                                      "-t", "0", "--max-tokens", "12", "--json", "--seed", "1",
                                      "--projection", choice])
        assert r.exit_code == 0, r.output
        out[choice] = json.loads(r.stdout)["tokens"]
    assert out["graph"] == out["host"]


@needs_patch
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
@pytest.mark.parametrize("norm", [False, True])
def test_graph_depth_entropies_within_002_nats_of_float64(request, model, norm):
    """The in-graph projection undoes the product's 8-bit rounding of the states as the host
    does (``led_round``): its depth entropies stay within 0.02 nats of float64 too."""
    from test_exact_depths import BOUND, _entropies64, _head64, _norm64

    path = request.getfixturevalue(model)
    info = inspect_model(path)
    layers = info.led_hidden_indices(8)
    graph, rt, states, n = _both(path, layers, norm=norm, temperature=0.6, k=None)
    assert graph.round_type == native.GGML_TYPE_Q8_0  # both heads are Q8_0
    w = _head64(path, info)
    head = LMHead(info)
    worst = 0.0
    for row in range(n - LAST, n):
        x = states[row].astype(np.float64)
        if norm:
            x = _norm64(x, head.norm_weight, info.norm_eps)
        z = graph.logits(row).astype(np.float64) / 0.6
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        got = -((e / s) * (z - np.log(s))).sum(axis=1)
        worst = max(worst, float(np.abs(got - _entropies64(x, w, info, 0.6)).max()))
    assert worst <= BOUND, worst
    head.close()
    rt.close()
