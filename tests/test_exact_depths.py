"""LED's depth entropies, as ``inspect`` reports them and LED and DoLa compute them, against an
independent float64 computation: the head dequantized by the ``gguf`` package's own numpy
dequantizer, the states multiplied without any activation rounding, the final norm and
soft-capping in float64. Every ln0 and ln1 depth at every position of a teacher-forced
response stays within 0.02 nats on both bundled models; ggml's product alone (llama.cpp's
8-bit rounding of the states) does not."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from led_local.decoding.engine import Engine
from led_local.decoding.methods import DecodeConfig
from led_local.decoding.samplers import LEDConfig
from led_local.diagnostics.inspect import analyse_position
from led_local.diagnostics.probe import Probe
from led_local.llama.gguf_info import inspect_model

BOUND = 0.02  # nats
PROMPT = "Question: a baker makes 24 muffins, sells 15 and bakes 9 more. How many muffins?"
RESPONSE = (" Let's think step by step. She starts with 24 muffins and sells 15, which leaves"
            " 24 - 15 = 9. Then she bakes 9 more, so 9 + 9 = 18. The answer is 18.")


def _head64(path, info) -> np.ndarray:
    """The LM head's exact values (V, n_embd) float32, through gguf's dequantizer."""
    reader = gguf.GGUFReader(path)
    t = next(t for t in reader.tensors if t.name == info.head_tensor)
    w = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.ascontiguousarray(w, dtype=np.float32).reshape(info.n_vocab, info.n_embd)


def _entropies64(x: np.ndarray, w: np.ndarray, info, temperature: float) -> np.ndarray:
    """Entropies (m,) of softmax(head(x) / T) for states x (m, n) float64, all in float64."""
    z = np.empty((x.shape[0], w.shape[0]))
    for a in range(0, w.shape[0], 16384):
        z[:, a:a + 16384] = x @ w[a:a + 16384].astype(np.float64).T
    if info.final_softcap:
        z = np.tanh(z / info.final_softcap) * info.final_softcap
    z = z / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    return -((e / s) * (z - np.log(s))).sum(axis=1)


def _norm64(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * weight.astype(np.float64)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_depth_entropies_within_002_nats_of_float64(request, model):
    path = request.getfixturevalue(model)
    info = inspect_model(path)
    assert not info.norm_is_layernorm  # both bundled models end in an RMSNorm
    led = LEDConfig()  # T 0.6, d 8: inspect's defaults
    w = _head64(path, info)
    ours, ref, plain = {"ln0": [], "ln1": []}, {"ln0": [], "ln1": []}, {"ln0": [], "ln1": []}
    with Probe(info, led, threads=2) as probe:
        collect = probe.capture.collect
        seen: list[np.ndarray] = []

        def keep():  # the states inspect projects, kept for the reference
            states = collect()
            seen.append(states[:, probe._depth_rows].copy())
            return states

        probe.capture.collect = keep
        prompt = probe.rt.tokenize(PROMPT)
        response = probe.rt.tokenize(RESPONSE, bos=False)
        steps = [analyse_position(p.final, p.shallow, token=p.token, led=led, in_scope=True)
                 for p in probe.positions(prompt, response)]
        states = np.concatenate(seen)  # (positions, d-1, n_embd)
        assert states.shape == (len(response), led.depths - 1, info.n_embd)
        for i, step in enumerate(steps):
            x = states[i].astype(np.float64)
            for norm, x64 in (("ln0", x), ("ln1", _norm64(x, probe.head.norm_weight,
                                                          info.norm_eps))):
                ours[norm].append(step[norm]["depth_entropy"])
                ref[norm].append(_entropies64(x64, w, info, led.temperature))
                z = probe.head.project(states[i], norm=norm == "ln1", exact=False)
                plain[norm].append(_softmax_entropy(z, led.temperature))
    for norm in ("ln0", "ln1"):
        err = np.abs(np.array(ours[norm]) - np.array(ref[norm]))
        assert err.max() <= BOUND, (model, norm, err.max(), np.unravel_index(err.argmax(),
                                                                              err.shape))
    # the 8-bit product the projection replaces is measurably off on the raw states
    old = np.abs(np.array(plain["ln0"]) - np.array(ref["ln0"]))
    assert old.max() > BOUND, (model, old.max())


def _softmax_entropy(z: np.ndarray, temperature: float) -> np.ndarray:
    z = z.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    return -((e / s) * (z - np.log(s))).sum(axis=1)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_led_and_dola_project_through_the_same_exact_head_as_inspect(request, model):
    """The engine's projection (LED's explorations, DoLa's premature layers) is the exact one
    inspect uses, and differs from llama.cpp's 8-bit product."""
    path = request.getfixturevalue(model)
    info = inspect_model(path)
    x = np.random.default_rng(0).normal(0, 3, (2, 3, info.n_embd)).astype(np.float32)
    x[..., 7] = 400.0  # a massive activation
    for method in ("led", "dola"):
        cfg = DecodeConfig(method=method, led=LEDConfig(depths=4))
        with Engine(info, cfg, n_ctx=64, projection="host") as engine:
            got = engine.project(x, norm=False)
            want = engine.head.project(x.reshape(6, -1), norm=False).reshape(got.shape)
            assert np.array_equal(got, want)
            old = engine.head.project(x.reshape(6, -1), norm=False, exact=False)
            assert not np.array_equal(want.reshape(old.shape), old)
