"""``led-local inspect`` end to end, against an independent numpy computation of every value.

The oracle below recomputes LED's quantities from scratch in float64 (its own softmax,
candidates, posteriors, entropies and distances; nothing from led_local's samplers): on the
tiny generated model from the numpy forward pass over its exact weights, on the bundled
models from hidden states captured in a separate llama.cpp decode and the LM head dequantised
to float32 by gguf, the states multiplied without any rounding (led-local's projection undoes
the 8-bit rounding of ggml's product, which moved SmolLM2's ln0 entropies by up to 0.6 nats:
tests/test_exact_depths.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from tinymodel import forward, rms_norm, write_tiny_llama

from led_local.cli import main
from led_local.diagnostics.probe import CHUNK
from led_local.llama.capture import CallbackCapture
from led_local.llama.gguf_info import inspect_model, read_tensors
from led_local.llama.runtime import Runtime

T = 0.6


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _softmax(z: np.ndarray, t: float) -> np.ndarray:
    z = np.asarray(z, np.float64) / (t if t > 0 else 1.0)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)


def oracle(final: np.ndarray, shallow: np.ndarray, k: int) -> dict:
    """LED's quantities at one position from (V,) final and (d-1, V) shallower logits."""
    p0 = _softmax(final, T)
    cand = np.argsort(-p0, kind="stable")[:k]
    q = p0[cand]
    ps = _softmax(shallow, T)
    s = np.cumsum(np.maximum(np.vstack([q, ps[:, cand]]), 1e-6), axis=0)
    s /= s.sum(axis=1, keepdims=True)
    h = -(s * np.log(np.maximum(s, 1e-9))).sum(axis=1)
    j = int(np.argmax(h))
    tv = 0.5 * np.abs(s[j] - q / q.sum()).sum()
    warm = _softmax(final, T + 0.1)[cand]
    return {"entropy_final": _entropy(p0), "gate": 1 - q.max(),
            "tv_temperature": 0.5 * np.abs(q / q.sum() - warm / warm.sum()).sum(),
            "depth_entropy": _entropy(ps), "candidate_mass": ps[:, cand].sum(axis=1),
            "posterior_entropy": h, "j_star": j, "tv_explore": tv, "tv_emit": (1 - q.max()) * tv}


def check_agreement(steps: list[dict], expected: list[dict], *, layers: list[dict] | None = None,
                    tol: float = 0.02) -> dict:
    """Entropies and TVs within ``tol`` at every position, j* equal at >= 90% of them (the
    bundled models agree to ~3e-3 nats, the tiny model to ~4e-3 through llama.cpp's F16 KV
    cache);
    returns the largest deviation of each value and the fraction of equal j*."""
    same_j = {"ln0": 0, "ln1": 0}
    worst: dict = {}
    for i, (got, exp) in enumerate(zip(steps, expected, strict=True)):
        for key in ("entropy_final", "gate", "tv_temperature"):
            assert abs(got[key] - exp[key]) <= tol, (i, key, got[key], exp[key])
        for norm in ("ln0", "ln1"):
            g, e = got[norm], exp[norm]
            for key in ("depth_entropy", "candidate_mass", "posterior_entropy", "tv_explore",
                        "tv_emit"):
                dev = float(np.abs(np.array(g[key]) - e[key]).max())
                worst[f"{norm}.{key}"] = max(worst.get(f"{norm}.{key}", 0.0), dev)
                assert dev <= tol, (i, norm, key, g[key], e[key])
            same_j[norm] += g["j_star"] == e["j_star"]
        if layers is not None:
            for norm in ("ln0", "ln1"):
                assert np.abs(np.array(got["layers"][norm]) - layers[i][norm]).max() <= tol
    for norm, n in same_j.items():
        assert n >= 0.9 * len(steps), (norm, n, len(steps))
        worst[f"{norm}.j_star_equal"] = n / len(steps)
    return worst


def _expected(final, shallow: dict, k: int) -> dict:
    exp = oracle(final, shallow["ln0"], k)
    exp.update(ln0=exp.copy(), ln1=oracle(final, shallow["ln1"], k))
    return exp


def test_tiny_model_matches_the_numpy_forward_pass(tmp_path):
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=6, seed=5)
    d, k = 4, 8
    r = run("inspect", tiny.path, "--raw", "-p", "hello world", "--response",
            "the answer is 42. so the sum is two plus two", "--led-depths", d,
            "--led-candidates", k, "--all-layers", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    resp = out["responses"][0]
    with Runtime(tiny.path, vocab_only=True) as rt:
        prompt = rt.tokenize("hello world")
    assert resp["prompt_tokens"] == len(prompt) and len(resp["tokens"]) > 10
    hidden, logits = forward(tiny, prompt + resp["tokens"])
    head = tiny.head.astype(np.float64)
    L = tiny.n_layer
    expected, layers = [], []
    for i in range(len(resp["tokens"])):
        p = len(prompt) - 1 + i
        raw = np.stack([hidden[il][p] for il in range(L)])  # l_out-0 .. l_out-(L-1)
        lens = {"ln0": raw @ head.T, "ln1": rms_norm(raw, tiny.output_norm, tiny.rms_eps) @ head.T}
        depth = [L - 2 - j for j in range(1, d)]  # LED depth j is l_out-(L-2-j)
        expected.append(_expected(logits[p], {n: z[depth] for n, z in lens.items()}, k))
        layers.append({n: _entropy(_softmax(z, T)) for n, z in lens.items()})
    check_agreement(resp["steps"], expected, layers=layers)
    assert [s["token"] for s in resp["steps"]] == resp["tokens"]


def _captured(path: Path, prompt_text: str, response_text: str, *, raw: bool, d: int):
    """Prompt and response tokens, llama.cpp's logits and LED's states at every response
    position, decoded on the schedule inspect uses (prompt, then response chunks), so that
    llama.cpp computes the very same values."""
    info = inspect_model(path)
    layers = info.led_hidden_indices(d)
    cap = CallbackCapture(layers, info.n_embd, architecture=info.architecture)
    with Runtime(info.path, n_ctx=512, eval_callback=cap.callback, info=info) as rt:
        text = prompt_text if raw else rt.apply_chat_template(
            [{"role": "user", "content": prompt_text}])
        prompt = rt.tokenize(text)
        response = rt.tokenize(response_text, bos=False)
        assert len(prompt) < rt.n_batch and len(response) <= CHUNK
        n = len(prompt) - 1
        cap.begin(np.zeros(0, np.int64))
        rt.decode(prompt[:-1], range(n), [0] * n, [False] * n)
        fed = prompt[-1:] + response[:-1]
        m = len(fed)
        cap.begin(np.arange(m))
        rt.decode(fed, range(n, n + m), [0] * m, [True] * m)
        states = cap.collect().copy()
        logits = np.stack([rt.logits(i) for i in range(m)])
    return info, prompt, response, logits, states


def _bundled(path: Path, prompt_text: str, response_text: str, *, raw: bool, d: int = 8,
             k: int = 8, tol: float = 1e-2) -> None:
    """inspect's values against the oracle; ``tol``: what the projection leaves of the
    states' 8-bit rounding (the rounding of the remainder) and the KV cache's F16 attention:
    measured up to ~3e-3 nats in entropies and 5.1e-3 in one position's ln0 candidate mass
    on SmolLM2 with flash attention (issue 26), half the issue's 0.02."""
    info, prompt, response, logits, states = _captured(path, prompt_text, response_text,
                                                       raw=raw, d=d)
    args = ["inspect", path, "-p", prompt_text, "--response", response_text, "--json"]
    r = run(*args, *(["--raw"] if raw else []))
    assert r.exit_code == 0, r.output
    resp = json.loads(r.stdout)["responses"][0]
    assert resp["tokens"] == response and resp["prompt_tokens"] == len(prompt)
    t = read_tensors(info.gguf, [info.head_tensor, "output_norm.weight"])
    head, w = t[info.head_tensor], t["output_norm.weight"].astype(np.float64)

    def lens(x: np.ndarray) -> np.ndarray:
        z = x @ head.astype(np.float64).T
        if info.final_softcap:
            z = np.tanh(z / info.final_softcap) * info.final_softcap
        return z

    expected = []
    for final, x in zip(logits, states.astype(np.float64)):
        normed = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + info.norm_eps) * w
        expected.append(_expected(final, {"ln0": lens(x), "ln1": lens(normed)}, k))
    check_agreement(resp["steps"], expected, tol=tol)


def test_smollm2_matches_a_float32_dequantised_head(smollm2):
    _bundled(smollm2, "What is 17 times 3? Think step by step.",
             "To find 17 times 3, multiply: 17 x 3 = 51. The answer is 51.",
             raw=False)


def test_gemma3_matches_a_float32_dequantised_head(gemma3):
    _bundled(gemma3, "Question: what is 17 times 3?\nAnswer:", " 17 times 3 is 51.", raw=True)
