"""solve --embed: the stored feature is the mean final-norm state over the response (checked by
teacher-forcing the recorded response with llama.cpp on SmolLM2, and against the tiny
model's own numpy forward pass), and recording it changes no sampled token for any method."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tinymodel import forward, rms_norm, write_tiny_llama

from led_local.cli import main
from led_local.decoding.batch import Job, context_size, run_jobs
from led_local.decoding.engine import Engine
from led_local.decoding.methods import DecodeConfig
from led_local.decoding.samplers import LEDConfig
from led_local.llama.runtime import Runtime

GSM8K = Path(__file__).resolve().parent / "data" / "gsm8k-3.jsonl"
QUESTIONS = ["What is 2+2? Reply with only the number.", "Count from one to twenty in words."]
CONFIGS = {
    "sample": DecodeConfig(method="sample", temperature=1.0, top_k=0, top_p=1.0),
    "greedy": DecodeConfig(method="greedy"),
    "led": DecodeConfig(method="led", temperature=1.0, led=LEDConfig(temperature=1.0)),
    "dola": DecodeConfig(method="dola", temperature=1.0),
}


def prompts(path) -> list[tuple[int, ...]]:
    with Runtime(path, vocab_only=True) as rt:
        return [tuple(rt.tokenize(rt.apply_chat_template([{"role": "user", "content": q}])))
                for q in QUESTIONS]


def pool(path, cfg, toks, *, embed, samples=2, max_tokens=10, parallel=3) -> dict:
    """{(prompt, sample): (tokens, finish_reason, last token fed, feature)} from run_jobs."""
    jobs = [Job(str(i), s, t) for i, t in enumerate(toks) for s in range(samples)]
    n_ctx = context_size(parallel, max(map(len, toks)), max_tokens)
    with Engine(path, cfg, n_ctx=n_ctx, n_seq=parallel + 1, batch_invariant=True,
                embed=embed) as e:
        return {(f.job.key, f.job.sample): (list(f.seq.tokens), f.seq.finish_reason,
                                            f.seq.pending, f.seq.embedding)
                for f in run_jobs(e, jobs, parallel=parallel, max_tokens=max_tokens, seed=0)}


def response_ids(tokens: list[int], finish: str, last: int) -> list[int]:
    """The tokens whose states are averaged: the response plus its end-of-generation token."""
    return tokens + [last] if finish == "stop" else tokens


def teacher_forced(rt: Runtime, prompt: tuple[int, ...], ids: list[int], *,
                   stepwise: bool) -> np.ndarray:
    """(T, n_embd) final-norm states at the response's positions, from feeding prompt + ids
    to a fresh sequence: one token per decode, or the response in one batch."""
    rt.seq_rm(0)
    seq = list(prompt) + ids
    n = len(prompt)
    if stepwise:  # the prompt's last token is fed alone, like the engine's first step
        rt.decode(seq[:n - 1], range(n - 1), [0] * (n - 1), [False] * (n - 1))
    else:
        rt.decode(seq[:n], range(n), [0] * n, [False] * n)
    rt.set_embeddings(True)
    try:
        if stepwise:
            rows = []
            for i in range(n - 1, len(seq)):
                rt.decode([seq[i]], [i], [0], [True])
                rows.append(rt.embedding(0))
            rows = rows[1:]
        else:
            rt.decode(ids, range(n, len(seq)), [0] * len(ids), [True] * len(ids))
            rows = [rt.embedding(i) for i in range(len(ids))]
    finally:
        rt.set_embeddings(False)
    return np.array(rows, np.float64)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_embed_changes_no_token_and_matches_teacher_forcing(smollm2, method):
    toks = prompts(smollm2)
    plain = pool(smollm2, CONFIGS[method], toks, embed=False)
    emb = pool(smollm2, CONFIGS[method], toks, embed=True)
    assert {k: v[:2] for k, v in plain.items()} == {k: v[:2] for k, v in emb.items()}
    assert all(v[3] is None for v in plain.values())
    finishes = set()
    with Runtime(smollm2, n_ctx=256, n_batch=256, batch_invariant=True) as rt:
        for (key, _), (tokens, finish, last, feature) in emb.items():
            assert feature.dtype == np.float32 and feature.shape == (576,)
            ids = response_ids(tokens, finish, last)
            rows = teacher_forced(rt, toks[int(key)], ids, stepwise=True)
            # the same kernels and shapes as the decode: equal up to the float32 rounding
            np.testing.assert_allclose(feature, rows.mean(axis=0), atol=1e-5)
            finishes.add(finish)
            if method == "greedy":
                # one batch of the whole response: other kernel shapes, float32 noise only
                batched = teacher_forced(rt, toks[int(key)], ids, stepwise=False)
                assert np.abs(feature - batched.mean(axis=0)).max() < 0.2
    if method == "greedy":
        assert finishes == {"stop", "length"}  # both ends of a response are covered


def test_tiny_model_feature_equals_numpy_forward(tmp_path):
    model = write_tiny_llama(tmp_path / "tiny.gguf", seed=3)
    prompt = (1, 300, 301, 77, 9, 42)
    cfg = DecodeConfig(method="sample", temperature=1.0, top_k=0, top_p=1.0)
    out = pool(model.path, cfg, [prompt], embed=True, samples=3, max_tokens=10, parallel=2)
    for tokens, finish, last, feature in out.values():
        ids = response_ids(tokens, finish, last)
        hidden, _ = forward(model, list(prompt) + ids)
        final = rms_norm(hidden[-1], model.output_norm, model.rms_eps)
        ref = final[len(prompt):].mean(axis=0)
        np.testing.assert_allclose(feature, ref, atol=2e-3 * np.abs(ref).max())
        # the prompt's last state is not part of it
        assert not np.allclose(feature, final[len(prompt) - 1:-1].mean(axis=0), atol=1e-3)


def test_solve_embed_records(smollm2, tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text("\n".join(GSM8K.read_text().splitlines()[:2]) + "\n")
    base = ["solve", smollm2, problems, "-n", "2", "--max-tokens", "16", "-m", "sample"]

    def solve(out, *extra):
        r = CliRunner().invoke(main, [str(a) for a in [*base, "-o", out, *extra]])
        assert r.exit_code == 0, r.output
        return sorted((json.loads(x) for x in Path(out).read_text().splitlines()),
                      key=lambda r: (r["problem_id"], r["sample"]))

    a, b = solve(tmp_path / "a.jsonl"), solve(tmp_path / "b.jsonl", "--embed")
    assert [r["text"] for r in a] == [r["text"] for r in b]
    assert not any("embedding" in r or "embed" in r for r in a)
    for r in b:
        assert r["embed"] is True and r["embedding_dim"] == 576
        vec = np.frombuffer(base64.b64decode(r["embedding"]), "<f4")
        assert vec.shape == (576,) and np.isfinite(vec).all()
    # a run without embeddings is not resumed with them
    r = CliRunner().invoke(main, [str(x) for x in [*base, "-o", tmp_path / "a.jsonl", "--embed"]])
    assert r.exit_code == 2 and "embed" in r.output
