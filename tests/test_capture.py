"""Hidden-state capture on a tiny generated GGUF, checked against a numpy forward pass."""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import forward, write_tiny_llama

from led_local.errors import UnsupportedModelError
from led_local.llama import native
from led_local.llama.capture import CallbackCapture, LayerInputCapture, make_capture, tensor_name
from led_local.llama.gguf_info import inspect_model
from led_local.llama.runtime import Runtime

CAPTURES = [CallbackCapture, LayerInputCapture]
# llama.cpp's default KV cache is F16 and its CPU flash attention rounds through F16
REL_TOL = 2e-2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", n_layer=6, seed=3)


def _open(tiny, cls, layers, **kw):
    info = inspect_model(tiny.path)
    if cls is LayerInputCapture and native.layer_inp_patch_version() is None:
        pytest.skip("stock llama.cpp build: no layer-input export patch")
    cap = cls(layers, info.n_embd) if cls is LayerInputCapture else \
        cls(layers, info.n_embd, architecture=info.architecture)
    rt = Runtime(info.path, n_ctx=128, eval_callback=cap.callback, info=info, **kw)
    cap.attach(rt)
    return cap, rt


def _capture_all(tiny, cls, layers: list[int], text: str) -> tuple[list[int], np.ndarray]:
    """Decode ``text`` in one batch with every token an output; its tokens and states."""
    cap, rt = _open(tiny, cls, layers)
    tokens = rt.tokenize(text)
    n = len(tokens)
    cap.begin(np.arange(n))
    rt.decode(tokens, range(n), [0] * n, [True] * n)
    states = cap.collect()
    rt.close()
    return tokens, states


def _close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("cls", CAPTURES)
def test_every_prompt_token_matches_numpy(tiny, cls):
    layers = list(range(1, tiny.n_layer))  # l_out-0 .. l_out-(L-2)
    tokens, states = _capture_all(tiny, cls, layers, "hello world, the answer is 42.")
    hidden, _ = forward(tiny, tokens)
    assert states.shape == (len(tokens), len(layers), tiny.n_embd)
    for s, h in enumerate(layers):
        assert _close(states[:, s], hidden[h - 1]) < REL_TOL, f"l_out-{h - 1}"


@pytest.mark.parametrize("cls", CAPTURES)
def test_output_rows_map_to_their_batch_positions(tiny, cls):
    layers = [2, 4]
    cap, rt = _open(tiny, cls, layers)
    tokens = rt.tokenize("what is the sum of two plus two? think step")
    n = len(tokens)
    picked = [1, 4, 5, n - 1]  # non-contiguous outputs
    cap.begin(np.array(picked))
    rt.decode(tokens, range(n), [0] * n, [i in picked for i in range(n)])
    states = cap.collect()
    rt.close()
    hidden, _ = forward(tiny, tokens)
    for s, h in enumerate(layers):
        assert _close(states[:, s], hidden[h - 1][picked]) < REL_TOL


@pytest.mark.parametrize("cls", CAPTURES)
def test_rows_follow_their_sequence_in_a_multi_sequence_batch(tiny, cls):
    layers = [1, 3, 5]
    cap, rt = _open(tiny, cls, layers, n_seq=3)
    prompts = [rt.tokenize(t) for t in ("hello world", "the answer is", "two plus two is 4")]
    for seq, toks in enumerate(prompts):
        cap.begin(np.array([], np.int64))
        rt.decode(toks, range(len(toks)), [seq] * len(toks), [False] * len(toks))
    nxt = [rt.tokenize("a", special=False)[-1], rt.tokenize("b", special=False)[-1],
           rt.tokenize("c", special=False)[-1]]
    # one token per sequence, in the order 2, 0, 1
    order = [2, 0, 1]
    cap.begin(np.arange(3))
    rt.decode([nxt[s] for s in order], [len(prompts[s]) for s in order], order, [True] * 3)
    states = cap.collect()
    logits = [rt.logits(i) for i in range(3)]
    rt.close()
    for row, seq in enumerate(order):
        hidden, ref_logits = forward(tiny, prompts[seq] + [nxt[seq]])
        for s, h in enumerate(layers):
            assert _close(states[row, s], hidden[h - 1][-1]) < REL_TOL, (row, seq, h)
        assert int(np.argmax(logits[row])) == int(np.argmax(ref_logits[-1]))


@pytest.mark.parametrize("cls", CAPTURES)
def test_prompt_split_over_several_decodes(tiny, cls):
    layers = [2, 5]
    cap, rt = _open(tiny, cls, layers, n_batch=4)
    tokens = rt.tokenize("hello world, the answer is 42. what is the sum")
    n = len(tokens)
    assert n > 8
    for start in range(0, n, 4):
        chunk = tokens[start:start + 4]
        last = start + len(chunk) == n
        cap.begin(np.array([len(chunk) - 1] if last else [], np.int64))
        rt.decode(chunk, range(start, start + len(chunk)), [0] * len(chunk),
                  [False] * (len(chunk) - 1) + [last])
    states = cap.collect()
    rt.close()
    hidden, _ = forward(tiny, tokens)
    for s, h in enumerate(layers):
        assert _close(states[0, s], hidden[h - 1][-1:]) < REL_TOL


def test_embedding_input_is_named_per_architecture():
    assert tensor_name(0, "llama") == "embd"
    assert tensor_name(0, "gemma3") == "inp_scaled"
    assert tensor_name(5, "qwen2") == "l_out-4"


def test_missing_graph_outputs_are_refused(tiny):
    info = inspect_model(tiny.path)
    cap = CallbackCapture([1], info.n_embd, architecture=info.architecture)
    cap._slot = {b"no-such-tensor": 0}  # a graph that never names the wanted state
    rt = Runtime(info.path, n_ctx=64, eval_callback=cap.callback, info=info)
    tokens = rt.tokenize("hello")
    cap.begin(np.array([len(tokens) - 1]))
    rt.decode(tokens, range(len(tokens)), [0] * len(tokens), [False] * (len(tokens) - 1) + [True])
    with pytest.raises(UnsupportedModelError, match="has no tensor l_out-0"):
        cap.collect()
    rt.close()


def test_layer_inp_refused_where_the_graph_lacks_it(tiny):
    info = inspect_model(tiny.path)
    from dataclasses import replace

    other = replace(info, architecture="granite")
    with pytest.raises(UnsupportedModelError, match="layer-inp"):
        make_capture(other, [1], prefer="layer-inp")
    assert isinstance(make_capture(other, [1]), CallbackCapture)


@pytest.mark.parametrize("cls", CAPTURES)
def test_embedding_state_is_captured(tiny, cls):
    tokens, states = _capture_all(tiny, cls, [0], "hello world")
    assert _close(states[:, 0], tiny.token_embd[tokens]) < 1e-6


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_both_paths_capture_qwen_graphs_alike(tmp_path, arch):
    """qwen3 registers block inputs in stock llama.cpp; qwen2 only with our patch."""
    if native.layer_inp_patch_version() is None:
        pytest.skip("stock llama.cpp build: no layer-input export patch")
    model = write_tiny_llama(tmp_path / f"{arch}.gguf", n_layer=5, seed=2, arch=arch)
    assert inspect_model(model.path).architecture == arch
    tokens, a = _capture_all(model, CallbackCapture, [1, 3, 4], "hello world, the answer")
    _, b = _capture_all(model, LayerInputCapture, [1, 3, 4], "hello world, the answer")
    assert np.isfinite(a).all() and np.abs(a).max() > 0
    np.testing.assert_array_equal(a, b)
