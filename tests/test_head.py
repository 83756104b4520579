"""LM-head projection in numpy against llama.cpp's own logits, on the real models."""

from __future__ import annotations

import numpy as np
import pytest

from led_local.llama import native
from led_local.llama.capture import CallbackCapture, LayerInputCapture
from led_local.llama.gguf_info import inspect_model
from led_local.llama.head import LMHead, final_norm
from led_local.llama.runtime import Runtime

PROMPT = "Question: what is 17 times 3? Answer step by step."


def _final_states_and_logits(path, cls=CallbackCapture):
    """l_out-(L-1) (the last block's output, before the final norm) and llama.cpp's logits
    for every prompt position."""
    info = inspect_model(path)
    layers = [info.n_layer]
    cap = cls(layers, info.n_embd) if cls is LayerInputCapture else \
        cls(layers, info.n_embd, architecture=info.architecture)
    with Runtime(info.path, n_ctx=256, eval_callback=cap.callback, info=info) as rt:
        cap.attach(rt)
        tokens = rt.tokenize(PROMPT)
        n = len(tokens)
        cap.begin(np.arange(n))
        rt.decode(tokens, range(n), [0] * n, [True] * n)
        states = cap.collect()[:, 0]
        logits = np.stack([rt.logits(i) for i in range(n)])
    return info, states, logits


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_projecting_the_final_normed_state_reproduces_llama_cpp_logits(model, request):
    info, states, logits = _final_states_and_logits(request.getfixturevalue(model))
    ours = LMHead(info).project(states, norm=True, exact=False)
    assert ours.shape == logits.shape
    # the same quantized head and the same ggml kernels: equal up to the norm's rounding,
    # except that the norm's float32 rounding (its summation order depends on the CPU's
    # vector width) may move one activation of a row across a Q8 rounding boundary, which
    # shifts that whole row by a little (Gemma on an AVX-512 machine: one row of 14, 4e-3)
    err = np.abs(ours - logits).max(axis=1)
    assert (err > 1e-3).sum() <= 1, err
    assert err.max() <= 1e-2, err
    assert (ours.argmax(1) == logits.argmax(1)).all()


def test_a_rows_logits_do_not_depend_on_how_many_rows_are_projected(smollm2):
    info = inspect_model(smollm2)
    head = LMHead(info, threads=2)
    x = np.random.default_rng(1).standard_normal((40, info.n_embd)).astype(np.float32) * 3
    full = head.project(x, norm=False)
    for m in (1, 7, 16, 33):
        assert np.array_equal(head.project(x[:m], norm=False), full[:m])


def test_rows_padded_to_the_kernels_tile_give_the_same_logits(smollm2):
    # head.row_quantum: zero rows pad a product to tinyBLAS's 4-row tile where it has one;
    # forced here on any CPU, since the padded rows must change no row's result anywhere
    info = inspect_model(smollm2)
    head = LMHead(info, threads=2)
    features = native.cpu_features()
    assert head.matrix.quantum == (4 if features.get("avx512") else 1)
    x = np.random.default_rng(2).standard_normal((23, info.n_embd)).astype(np.float32) * 3
    head.matrix.quantum = 1
    plain = [head.project(x[:m], norm=True) for m in (3, 5, 7, 23)]
    head.matrix.quantum = 4
    padded = [head.project(x[:m], norm=True) for m in (3, 5, 7, 23)]
    for a, b in zip(plain, padded):
        assert a.shape == b.shape and np.array_equal(a, b)


def test_norm_option_changes_the_projection(smollm2):
    info, states, logits = _final_states_and_logits(smollm2)
    head = LMHead(info)
    raw = head.project(states, norm=False)
    assert not np.allclose(raw, logits, atol=1.0)


def test_head_extras_apply_after_the_product(smollm2):
    from dataclasses import replace

    info = inspect_model(smollm2)
    head = LMHead(info)
    x = np.random.default_rng(0).standard_normal((2, info.n_embd)).astype(np.float32)
    plain = head.project(x, norm=False)
    head.info = replace(info, final_softcap=5.0)
    capped = head.project(x, norm=False)
    np.testing.assert_allclose(capped, 5.0 * np.tanh(plain / 5.0), rtol=1e-5, atol=1e-5)
    head.info = replace(info, logit_scale=0.5, architecture="command-r")
    np.testing.assert_allclose(head.project(x, norm=False), 0.5 * plain, rtol=1e-6)


def test_final_norm_kinds():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (5, 16)).astype(np.float32)
    w = rng.normal(1.0, 0.1, 16).astype(np.float32)
    b = rng.normal(0.0, 0.1, 16).astype(np.float32)
    x64 = x.astype(np.float64)
    rms = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * w
    c = x64 - x64.mean(-1, keepdims=True)
    ln = c / np.sqrt((c ** 2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(final_norm(x, w, None, eps=1e-5, layernorm=False), rms, rtol=1e-5)
    np.testing.assert_allclose(final_norm(x, w, None, eps=1e-5, layernorm=True), ln, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(final_norm(x, w, b, eps=1e-5, layernorm=True), ln + b, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize(("arch", "layernorm"), [("llama", False), ("command-r", True),
                                                 ("cohere2", True), ("qwen3", False)])
def test_command_r_and_cohere2_end_in_a_layernorm_without_bias(tmp_path, arch, layernorm):
    """llama.cpp's command-r and cohere2 graphs end with LLM_NORM and no bias tensor: the host
    projection (LED's --led-norm, DoLa) must remove the mean there too."""
    from tinymodel import write_tiny_llama

    model = write_tiny_llama(tmp_path / f"{arch}.gguf", arch=arch)
    info = inspect_model(model.path)
    assert info.norm_is_layernorm is layernorm
    head = LMHead(info)
    try:
        x = np.random.default_rng(1).normal(1.0, 1.0, (2, info.n_embd)).astype(np.float32)
        got = head.final_norm(x)
        want = final_norm(x, model.output_norm, None, eps=info.norm_eps, layernorm=layernorm)
        assert np.array_equal(got, want)
        other = final_norm(x, model.output_norm, None, eps=info.norm_eps,
                           layernorm=not layernorm)
        assert np.abs(got - other).max() > 0.1  # the two kinds differ on these states
    finally:
        head.close()
