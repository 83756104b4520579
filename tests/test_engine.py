"""The decode engine on the real SmolLM2: determinism, reproducibility, scope, capture paths."""

from __future__ import annotations

import pytest

from led_local.decoding.engine import Engine
from led_local.decoding.generate import generate, prompt_tokens
from led_local.decoding.methods import DecodeConfig
from led_local.decoding.samplers import LEDConfig
from led_local.llama import native

QUESTION = "What is 15 + 27? Answer briefly."


def _run(path, cfg, *, seed, max_tokens=24, capture="auto"):
    with Engine(path, cfg, n_ctx=512, capture=capture) as e:
        toks = prompt_tokens(e, QUESTION)
        return generate(e, toks, max_tokens=max_tokens, seed=seed)


def _led(think_end: str = "</think>", **kw) -> DecodeConfig:
    t = kw.pop("temperature", 0.6)
    return DecodeConfig(method="led", temperature=t, led=LEDConfig(temperature=t, **kw),
                        think_end=think_end)


def test_greedy_method_is_deterministic(smollm2):
    a = _run(smollm2, DecodeConfig(method="greedy"), seed=1)
    b = _run(smollm2, DecodeConfig(method="greedy"), seed=2)
    assert a.tokens == b.tokens and a.text == b.text


def test_greedy_led_is_deterministic_for_a_seed(smollm2):
    cfg = _led(temperature=0.0)
    a, b = _run(smollm2, cfg, seed=5), _run(smollm2, cfg, seed=5)
    assert a.tokens == b.tokens and a.depths == b.depths


def test_greedy_led_without_gate_ignores_the_seed(smollm2):
    cfg = _led(temperature=0.0, exploit=False)
    a, b = _run(smollm2, cfg, seed=1), _run(smollm2, cfg, seed=99)
    assert a.tokens == b.tokens
    assert all(d is not None for d in a.depths)  # exploit off: every step explores


def test_seeded_led_is_reproducible_and_seeds_differ(smollm2):
    cfg = _led(exploit=False)
    a, b = _run(smollm2, cfg, seed=7, max_tokens=32), _run(smollm2, cfg, seed=7, max_tokens=32)
    assert a.tokens == b.tokens and a.depths == b.depths
    others = [_run(smollm2, cfg, seed=s, max_tokens=32).tokens for s in (8, 9, 10)]
    assert any(o != a.tokens for o in others)


def test_seeded_sample_is_reproducible(smollm2):
    cfg = DecodeConfig(method="sample")
    assert _run(smollm2, cfg, seed=3).tokens == _run(smollm2, cfg, seed=3).tokens


def test_led_depths_are_valid_indices(smollm2):
    r = _run(smollm2, _led(exploit=False, depths=5), seed=1)
    assert len(r.depths) == len(r.tokens)
    assert {d for d in r.depths} <= set(range(5))


def test_no_exploration_after_the_think_end_marker(smollm2):
    # SmolLM2 does not think; let its first space end the scope instead of </think>
    with Engine(smollm2, _led(exploit=False, think_end=" "), n_ctx=512) as e:
        r = generate(e, prompt_tokens(e, QUESTION), max_tokens=40, seed=4)
        text = b""
        end = None
        for i, tok in enumerate(r.tokens):
            text += e.rt.token_bytes(tok)
            if b" " in text:
                end = i
                break
    assert end is not None, r.text
    assert all(d is not None for d in r.depths[: end + 1])
    assert all(d is None for d in r.depths[end + 1:])


@pytest.mark.skipif(native.layer_inp_patch_version() is None, reason="stock llama.cpp build")
def test_both_capture_paths_give_the_same_led_tokens(smollm2):
    cfg = _led(exploit=False)
    a = _run(smollm2, cfg, seed=11, capture="callback")
    b = _run(smollm2, cfg, seed=11, capture="layer-inp")
    assert a.tokens == b.tokens and a.depths == b.depths


def test_dola_runs_and_is_deterministic_when_greedy(smollm2):
    cfg = DecodeConfig(method="dola", temperature=0.0, dola_layers="high")
    a, b = _run(smollm2, cfg, seed=1), _run(smollm2, cfg, seed=2)
    assert a.tokens == b.tokens and len(a.tokens) > 0


def test_logprobs_are_final_layer_log_probabilities(smollm2):
    import numpy as np

    cfg = _led(exploit=False)
    with Engine(smollm2, cfg, n_ctx=512, logprobs=True) as e:
        toks = prompt_tokens(e, QUESTION)
        r = generate(e, toks, max_tokens=8, seed=2)
    assert len(r.logprobs) == len(r.tokens)
    assert all(np.isfinite(lp) and lp <= 0 for lp in r.logprobs)


@pytest.mark.parametrize("capture", ["callback", "layer-inp"])
def test_led_runs_on_gemma3(gemma3, capture):
    if capture == "layer-inp" and native.layer_inp_patch_version() is None:
        pytest.skip("stock llama.cpp build: gemma3 has no layer-input export")
    cfg = _led(exploit=False)
    with Engine(gemma3, cfg, n_ctx=256, capture=capture) as e:
        toks = prompt_tokens(e, "The capital of France is", raw=True)
        r = generate(e, toks, max_tokens=12, seed=5)
    assert len(r.tokens) > 0 and all(d is not None for d in r.depths)
    if capture == "layer-inp":
        with Engine(gemma3, cfg, n_ctx=256, capture="callback") as e:
            other = generate(e, toks, max_tokens=12, seed=5)
        assert other.tokens == r.tokens and other.depths == r.depths


def test_run_jobs_with_ignore_eos_runs_every_sample_to_max_tokens(smollm2):
    # what bench/serve_bench.py's solve side needs to do llama-batched-bench's work
    from led_local.decoding.batch import Job, context_size, run_jobs

    with Engine(smollm2, DecodeConfig(method="greedy"), n_ctx=context_size(2, 64, 24), n_seq=3,
                batch_invariant=True) as engine:
        toks = tuple(prompt_tokens(engine, "Reply with one word: yes or no."))
        jobs = [Job("p", i, toks) for i in range(2)]
        ended = [f.seq for f in run_jobs(engine, jobs, parallel=2, max_tokens=24, seed=0)]
        assert all(s.finish_reason == "stop" and len(s.tokens) < 10 for s in ended)
        ran = [f.seq for f in run_jobs(engine, jobs, parallel=2, max_tokens=24, seed=0,
                                       ignore_eos=True)]
        eog = set(engine.rt.eog_tokens().tolist())
        for s, e in zip(ran, ended):
            assert s.finish_reason == "length" and len(s.tokens) == 24
            assert not eog & set(s.tokens)
            assert s.tokens[:len(e.tokens) - 1] == e.tokens[:-1]  # greedy: the same until the end
