"""LM-head projection in numpy against llama.cpp's own logits, on the real models."""

from __future__ import annotations

import numpy as np
import pytest

from led_local.capture import CallbackCapture, LayerInputCapture
from led_local.gguf_info import inspect_model
from led_local.head import LMHead
from led_local.runtime import Runtime

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
    ours = LMHead(info).project(states, norm=True)
    assert ours.shape == logits.shape
    # llama.cpp multiplies by the quantized head with Q8-quantized activations: small errors,
    # so top-1 agrees wherever llama.cpp's own top two are not a near tie
    err = np.abs(ours - logits).max()
    assert err < 0.02 * np.abs(logits).max(), err
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * err
    assert clear.sum() >= len(clear) // 2
    assert (ours.argmax(1) == logits.argmax(1))[clear].all()


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
