"""SwiReasoning: the state machine against traces of the authors' own generate_swir on a
scripted model (V = 8, E = I), through the same pick and feed functions decoding uses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from led_local.cli import main
from led_local.decoding.swir import (
    EXPLICIT,
    LATENT,
    SwirConfig,
    SwirState,
    SwirVocab,
    feed_vector,
    soft_vectors,
    swir_pick,
    top_set,
)
from led_local.errors import LedError
from led_local.llama.embeddings import LazyInputRows, input_embeddings, input_rows, input_scale
from led_local.llama.gguf_info import inspect_model
from led_local.llama.runtime import Runtime

GSM8K = Path(__file__).resolve().parent / "data" / "gsm8k-3.jsonl"

# tokens: 0 EOS, 1-3 plain, 4 math, 5 <think>, 6 </think>, 7 line break
VOCAB = SwirVocab(think_open=5, think_close=6, line_break=7, math=frozenset({4}),
                  converge=(6,), terminate=(6, 7, 1))
E = np.eye(8, dtype=np.float32)
S_MAX = 40

# Scenario A: W = 3, M = 1, alpha0 = 0.5, beta0 = 0.7, B = 5.
# (argmax j, logit a, entropy, mode after, count, emitted, event, fed weights {token: w})
SCENARIO_A = [
    (1, 2.0, 1.6394, LATENT, 0, 1, None, {1: .4622, 7: .1625, "other": .0625}),
    (4, 1.0, 1.9943, LATENT, 0, 4, None, {4: 1.0, "other": 0.0}),
    (2, 3.0, 1.0743, EXPLICIT, 1, 2, "E", {2: .5302, 6: .3114, "other": .0264}),
    (3, 3.0, 1.0743, EXPLICIT, 1, 6, None, {6: 1.0, "other": 0.0}),
    (3, 0.5, 2.0621, EXPLICIT, 1, 3, None, {3: 1.0, "other": 0.0}),
    (3, 0.5, 2.0621, LATENT, 1, 3, "L", {3: .1072, 5: .5025, "other": .065}),
    (3, 0.5, 2.0621, LATENT, 1, 3, None, {3: .1906, "other": .1156}),
    (2, 2.5, 1.3663, EXPLICIT, 2, 2, "E", {2: .4779, 6: .2867, "other": .0392}),
    (3, 3.0, 1.0743, EXPLICIT, 2, 6, None, {6: 1.0, "other": 0.0}),
    (3, 3.0, 1.0743, EXPLICIT, 2, 3, None, {3: 1.0, "other": 0.0}),
    (3, 3.0, 1.0743, EXPLICIT, 2, 3, None, {3: 1.0, "other": 0.0}),
    (3, 1.0, 1.9943, LATENT, 2, 3, "L", {3: .1783, 5: .4281, "other": .0656}),
    (2, 4.0, 0.5752, EXPLICIT, 3, 2, "E", {2: .7002, 6: .2228, "other": .0128}),
    (3, 3.0, 1.0743, EXPLICIT, 3, 6, None, {6: 1.0, "other": 0.0}),
    (3, 3.0, 1.0743, EXPLICIT, 3, 7, None, {7: 1.0, "other": 0.0}),
    (3, 3.0, 1.0743, LATENT, 3, 1, "L", {3: .5098, 5: .3379, "other": .0254}),
    (3, 3.0, 1.0743, LATENT, 3, 3, None, None),  # budget 0: stop, nothing fed
]
EMITTED_A = [1, 4, 2, 6, 3, 3, 3, 2, 6, 3, 3, 3, 2, 6, 7, 1, 3]


def _logits(j: int, a: float) -> np.ndarray:
    z = np.zeros(8, np.float32)
    z[j] = a
    return z


def _drive(script, cfg):
    """Run the scripted model greedily through swir_pick and feed_vector, as the engine does;
    yields (step, state snapshot, fed vector or None when the step stops generation)."""
    state = SwirState()
    for j, a in script:
        step, p = swir_pick(_logits(j, a), state, closes=lambda x: x == VOCAB.think_close,
                            cfg=cfg, vocab=VOCAB, max_new=S_MAX, temperature=0.0, rng=None)
        fed = None if step.stop or step.token == 0 else feed_vector(step.feed, p, E)
        yield step, (state.mode, state.count, state.locked), fed
        if fed is None:
            return


def _check_weights(fed: np.ndarray, want: dict) -> None:
    for t in range(8):
        assert fed[t] == pytest.approx(want.get(t, want["other"]), abs=1e-4), t


def test_scenario_a_matches_the_authors_trace():
    cfg = SwirConfig(window=3, max_switch=1, alpha=0.5, beta=0.7, budget=5)
    out = list(_drive([(j, a) for j, a, *_ in SCENARIO_A], cfg))
    assert [st.token for st, _, _ in out] == EMITTED_A
    for s, ((st, (mode, count, _), fed), row) in enumerate(zip(out, SCENARIO_A)):
        _, _, h, want_mode, want_count, _, event, weights = row
        assert st.entropy == pytest.approx(h, abs=1e-4), s
        assert (mode, count) == (want_mode, want_count), s
        assert (st.to_explicit, st.to_latent) == (event == "E", event == "L"), s
        if weights is None:
            assert st.stop and fed is None
        else:
            assert not st.stop
            _check_weights(fed, weights)


def test_scenario_b_locks_on_a_sampled_end_of_thinking():
    cfg = SwirConfig(window=3, max_switch=None, alpha=1.0, beta=0.7)
    script = [(1, 2.0), (2, 3.0), (6, 3.0), (3, 0.2), (3, 0.2), (3, 0.2), (0, 3.0)]
    out = list(_drive(script, cfg))
    assert [st.token for st, _, _ in out] == [1, 2, 6, 3, 3, 3, 0]
    assert out[0][0].entropy == pytest.approx(1.6394, abs=1e-4)
    _check_weights(out[0][2], {1: .4622, 7: .1625, "other": .0625})
    assert out[1][0].to_explicit and out[1][0].entropy == pytest.approx(1.0743, abs=1e-4)
    _check_weights(out[1][2], {2: .5247, 6: .3186, "other": .0261})
    assert out[2][1] == (EXPLICIT, 1, True)  # locked by the model's own </think>
    _check_weights(out[2][2], {6: 1.0, "other": 0.0})
    for st, (mode, _, locked), fed in out[3:6]:
        assert st.entropy == pytest.approx(2.0770, abs=1e-4)
        assert mode == EXPLICIT and locked and not st.to_latent
        _check_weights(fed, {3: 1.0, "other": 0.0})
    assert out[6][2] is None


def _oracle_modes(script, *, temperature_of_entropy: float, window: int):
    """Steps 1 and 5 of docs/SWIR.md in plain Python: the entropy of softmax(z / t) (t = 1:
    the untempered distribution the rule reads) and the modes it drives, no switch control,
    nothing locked."""
    mode, stay, ref, out = LATENT, 0, None, []
    for s, z in enumerate(script):
        zt = [x / temperature_of_entropy for x in z]
        top = max(zt)
        e = [math.exp(x - top) for x in zt]
        h = -sum(x / sum(e) * math.log(max(x / sum(e), 1e-12)) for x in e)
        if s == 0:
            ref = h
        else:
            stay += 1
            to_e = mode == LATENT and h < ref
            to_l = mode == EXPLICIT and h > ref and stay >= window
            if to_e or to_l:
                mode, stay, ref = (EXPLICIT if to_e else LATENT), 0, h
        out.append((round(h, 12), mode))
    return out


def test_sampled_trace_reads_the_untempered_entropy_and_draws_from_the_filtered_tempered():
    """At T = 0.6 with top-k and top-p: the entropies, modes and switches follow the
    untempered distribution (the tempered one would switch elsewhere on this script), and each
    emitted token is the inverse-CDF draw of the step's generator from the tempered, top-k,
    then top-p (mass above <= p) distribution."""
    rng = np.random.default_rng(0)
    script = (rng.normal(0, 1, (30, 8)) * rng.uniform(0.2, 3.0, (30, 1))).astype(
        np.float32).tolist()
    want = _oracle_modes(script, temperature_of_entropy=1.0, window=2)
    tempered = _oracle_modes(script, temperature_of_entropy=0.6, window=2)
    assert [m for _, m in want] != [m for _, m in tempered]
    vocab = SwirVocab(None, None, 7, frozenset(), (), (7,))
    cfg, state = SwirConfig(window=2), SwirState()
    for s, z in enumerate(script):
        z = np.array(z, np.float32)
        step, p = swir_pick(z, state, closes=lambda x: False, cfg=cfg, vocab=vocab,
                            max_new=S_MAX, temperature=0.6, rng=np.random.default_rng(s),
                            top_k=5, top_p=0.8)
        assert (round(step.entropy, 12), state.mode) == pytest.approx(want[s], abs=1e-9), s
        # the sampled token, by hand: z / T, the 5 largest, then top-p 0.8 with <=
        zt = z.astype(np.float64) / 0.6
        order = sorted(range(8), key=lambda i: (-zt[i], i))[:5]
        e = np.exp(zt[order] - zt[order].max())
        pk = e / e.sum()
        before = np.concatenate([[0.0], np.cumsum(pk)[:-1]])
        keep = sorted(order[i] for i in range(5) if before[i] <= 0.8)
        ek = np.exp(zt[keep] - zt[keep].max())
        u = np.random.default_rng(s).random()
        cdf = np.cumsum(ek / ek.sum())
        assert step.token == keep[min(int(np.searchsorted(cdf, u * cdf[-1], side="right")),
                                      len(keep) - 1)], s


def test_without_delimiters_the_blends_are_skipped():
    vocab = SwirVocab(None, None, 7, frozenset({4}), (), (7, 1))
    state = SwirState()
    kw = dict(closes=lambda x: False, cfg=SwirConfig(window=1, alpha=0.5), vocab=vocab,
              max_new=S_MAX, temperature=0.0, rng=None)
    swir_pick(_logits(1, 2.0), state, **kw)
    step, _ = swir_pick(_logits(2, 3.0), state, **kw)  # to explicit: E[x] itself
    assert step.to_explicit and step.feed.token == 2
    step, _ = swir_pick(_logits(3, 0.2), state, **kw)  # to latent: the plain soft vector
    assert step.to_latent and step.feed == (1.0, ())


def test_soft_vectors_do_not_depend_on_the_batch():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5000, 64)).astype(np.float32)
    p = rng.dirichlet(np.ones(5000), size=20).astype(np.float32)
    alone = np.concatenate([soft_vectors(p[i:i + 1], emb) for i in range(20)])
    for n in (2, 3, 7, 16, 20):
        assert np.array_equal(soft_vectors(p[:n], emb), alone[:n])
    assert np.array_equal(soft_vectors(p[5:12], emb), alone[5:12])
    assert np.allclose(alone, p @ emb, atol=1e-6)


def test_one_blas_thread_gives_the_products_of_all_threads():
    from led_local.decoding.swir import one_blas_thread

    rng = np.random.default_rng(1)
    emb = rng.standard_normal((20000, 96)).astype(np.float32)
    p = rng.dirichlet(np.ones(20000)).astype(np.float32)
    everywhere = p @ emb
    with one_blas_thread():
        alone = p @ emb
    assert np.array_equal(alone, everywhere)


def test_the_batched_entropy_is_swir_entropy_to_rounding():
    from led_local.decoding.filters import softmax_rows
    from led_local.decoding.swir import swir_entropy

    rng = np.random.default_rng(2)
    z = rng.standard_normal((3, 4000)) * np.array([[40.0], [1.0], [5.0]])  # p < 1e-12 too
    p, logp = softmax_rows(z)
    for r in range(3):
        assert swir_entropy(p[r], logp[r]) == pytest.approx(swir_entropy(p[r]), rel=1e-12)


# -- on the real models ------------------------------------------------------------------------

def run(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_a_token_fed_as_its_embedding_row_gives_identical_logits(model, request):
    path = request.getfixturevalue(model)
    info = inspect_model(path)
    emb = input_embeddings(info)
    scale = math.sqrt(info.n_embd) if info.architecture == "gemma3" else 1.0
    assert input_scale(info) == scale and emb.shape == (info.n_vocab, info.n_embd)
    with Runtime(path, n_ctx=128, info=info) as rt:
        toks = rt.tokenize("The capital of France is")
        n = len(toks)
        rt.decode(toks, range(n), [0] * n, [False] * n)
        nxt = rt.tokenize(" Paris", bos=False)[0]
        rt.decode([nxt], [n], [0], [True])
        by_token = rt.logits(0)
        rt.seq_rm(0, n, -1)
        rt.decode_embd(emb[nxt][None, :], [n], [0], [True])
        by_row = rt.logits(0)
        assert np.array_equal(by_token, by_row)  # bit for bit, the Gemma scale included
        if scale != 1.0:  # an unscaled row is not the token
            rt.seq_rm(0, n, -1)
            rt.decode_embd(emb[nxt][None, :] / np.float32(scale), [n], [0], [True])
            assert np.abs(rt.logits(0) - by_token).max() > 1.0


SWIR = ["-m", "swir", "--swir-window", "3", "--swir-max-switch", "2"]


def test_generate_is_reproducible_and_reports_switches(smollm2):
    args = ("generate", smollm2, "-p", "What is 12 + 30?", *SWIR, "-n", "40", "--seed", "2",
            "--json")
    a, b = json.loads(run(*args).stdout), json.loads(run(*args).stdout)
    assert a["tokens"] == b["tokens"] and a["swir"] == b["swir"]
    sw = a["swir"]
    assert sw["switches"] == sw["to_explicit"] + sw["to_latent"] > 0
    assert 0 < sw["latent_steps"] < a["n_tokens"] + 1
    assert sw["delimiters"] is False and sw["line_break"] == 198 and sw["line_break_fallback"]
    assert a["params"]["swir_window"] == 3 and a["params"]["swir_max_switch"] == 2


@pytest.mark.parametrize("extra", [[], ["--swir-top-mass", "0.9"]])
def test_solve_is_batch_invariant_with_latent_and_token_rows(smollm2, tmp_path, extra):
    def solve(out, parallel):
        r = run("solve", smollm2, GSM8K, "-o", out, "-n", "2", "--max-tokens", "12",
                "--limit", "2", "--parallel", parallel, *SWIR, *extra)
        assert r.exit_code == 0, r.output
        recs = [json.loads(x) for x in out.read_text().splitlines()]
        return sorted(({k: v for k, v in r.items() if k != "time_s"} for r in recs),
                      key=lambda r: (r["problem_id"], r["sample"]))

    a, b = solve(tmp_path / "a.jsonl", 1), solve(tmp_path / "b.jsonl", 16)
    assert len(a) == 4 and a == b
    modes = [r["swir"]["latent"] for r in a]
    assert any("L" in m and "E" in m for m in modes)  # steps mixed vectors and tokens
    assert len(set(modes)) > 1


def test_chat_shows_latent_steps_dim(smollm2):
    r = run("chat", smollm2, *SWIR, "-n", "12", "--seed", "1", "--think-end", "",
            input="Hello\n/exit\n", color=True)
    assert r.exit_code == 0, r.output
    assert "\x1b[2m" in r.stdout


def test_a_sequence_cannot_switch_to_swir_on_another_engine(smollm2):
    from led_local.decoding.engine import Engine
    from led_local.decoding.methods import DecodeConfig
    from led_local.errors import LedError

    with Engine(smollm2, DecodeConfig(method="sample"), n_ctx=256) as engine:
        with pytest.raises(LedError, match="method swir needs the input embeddings"):
            engine.check_config(DecodeConfig(method="swir"))
        engine.check_config(DecodeConfig(method="hapo"))
    with Engine(smollm2, DecodeConfig(method="swir"), n_ctx=256) as engine:
        with pytest.raises(LedError, match="swir_top_mass 0.5 differs"):
            engine.check_config(DecodeConfig(method="swir", swir=SwirConfig(top_mass=0.5)))


# -- the opt-in approximate mixture (--swir-top-mass) -----------------------------------------

def test_top_set_is_the_smallest_set_reaching_the_mass():
    p = np.array([0.1, 0.5, 0.15, 0.25], np.float32)
    assert top_set(p, 0.5).tolist() == [1]
    assert top_set(p, 0.7).tolist() == [1, 3]
    assert top_set(p, 0.75).tolist() == [1, 3]  # reached exactly
    assert top_set(p, 0.76).tolist() == [1, 3, 2]
    assert top_set(p, 1.0).tolist() == [1, 3, 2, 0]
    assert top_set(np.full(4, 0.25, np.float32), 0.5).tolist() == [0, 1]  # ties: lower id


def test_top_mass_mixture_is_renormalised_over_the_set():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 6)).astype(np.float32)
    p = rng.dirichlet(np.full(50, 0.3), size=3).astype(np.float32)
    got = soft_vectors(p, emb, top_mass=0.8)
    for row, v in zip(p, got):
        ids = top_set(row, 0.8)
        assert row[ids].sum() >= 0.8 - 1e-6 and row[ids[:-1]].sum() < 0.8
        want = (row[ids] / row[ids].sum()).astype(np.float64) @ emb[ids].astype(np.float64)
        np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(soft_vectors(p, emb, top_mass=1.0)[0], p[0] @ emb)
    with pytest.raises(LedError, match="swir_top_mass must be in"):
        SwirConfig(top_mass=0.0)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_rows_read_on_demand_equal_the_matrix(model, request):
    info = inspect_model(request.getfixturevalue(model))
    emb = input_embeddings(info)
    lazy = input_rows(info, resident=False)
    assert isinstance(lazy, LazyInputRows) and lazy.shape == emb.shape and lazy.nbytes == 0
    ids = np.array([0, 1, 198, info.n_vocab - 1, 12345])
    assert np.array_equal(lazy[ids], emb[ids])  # bit for bit, the Gemma scale included
    assert np.array_equal(lazy[198], emb[198]) and lazy[198].shape == (info.n_embd,)
    with pytest.raises(IndexError):
        lazy[np.array([info.n_vocab])]
    with pytest.raises(LedError, match="needs the whole embedding matrix"):
        soft_vectors(np.full((1, info.n_vocab), 1 / info.n_vocab, np.float32), lazy)


def test_generate_with_top_mass_holds_no_matrix_and_says_so(smollm2):
    from led_local.decoding.engine import Engine
    from led_local.decoding.methods import DecodeConfig

    with Engine(smollm2, DecodeConfig(method="swir", swir=SwirConfig(top_mass=0.9)),
                n_ctx=256) as engine:
        assert isinstance(engine.embeddings, LazyInputRows)
    args = ("generate", smollm2, "-p", "What is 12 + 30?", *SWIR, "-n", "24", "--seed", "2",
            "--json", "--swir-top-mass", "0.9")
    a, b = json.loads(run(*args).stdout), json.loads(run(*args).stdout)
    assert a["tokens"] == b["tokens"] and a["swir"]["latent_steps"] > 0
    assert a["params"]["swir_top_mass"] == 0.9
    exact = json.loads(run(*args[:-2]).stdout)
    assert "swir_top_mass" not in exact["params"]
    for bad in (["--swir-top-mass", "0"], ["--swir-top-mass", "1.5"]):
        r = run("generate", smollm2, "-p", "x", "-m", "swir", *bad)
        assert r.exit_code == 2 and "--swir-top-mass" in r.output
    r = run("generate", smollm2, "-p", "x", "-m", "sample", "--swir-top-mass", "0.9")
    assert r.exit_code == 2 and "applies to --method swir" in r.output


# -- what mutation testing found untested (bench/mutate.py) ---------------------------------

def test_sampling_uses_transformers_top_p_at_its_boundary():
    """Equal logits: the mass above token i is exactly i/8, and top-p 0.25 keeps three tokens
    under transformers' rule (mass above <= p), two under vLLM's: the draws come from three."""
    from led_local.decoding.filters import filtered_probs

    idx, p = filtered_probs(np.zeros(8, np.float32), temperature=0.6, top_p=0.25,
                            convention="hf")
    assert idx.tolist() == [0, 1, 2]
    got = set()
    for seed in range(60):
        step, _ = swir_pick(np.zeros(8, np.float32), SwirState(), closes=lambda x: False,
                            cfg=SwirConfig(), vocab=VOCAB, max_new=S_MAX, temperature=0.6,
                            rng=np.random.default_rng(seed), top_p=0.25)
        u = np.random.default_rng(seed).random()
        assert step.token == idx[min(int(np.searchsorted(np.cumsum(p), u, side="right")), 2)]
        got.add(step.token)
    assert got == {0, 1, 2}


def test_unfiltered_sampled_pick_draws_from_the_whole_tempered_distribution():
    from led_local.decoding.filters import sample_token

    z = np.array([1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0, -4.0], np.float32)
    for seed in range(40):
        step, _ = swir_pick(z, SwirState(), closes=lambda x: False, cfg=SwirConfig(),
                            vocab=VOCAB, max_new=S_MAX, temperature=1.3,
                            rng=np.random.default_rng(seed))
        assert step.token == sample_token(z, temperature=1.3, rng=np.random.default_rng(seed),
                                          convention="hf")


def test_entropy_floor_is_1e_12():
    from led_local.decoding.swir import swir_entropy

    p = np.full(2002, 1.5e-12)
    p[:2] = (1.0 - p[2:].sum()) / 2
    want = -sum(float(x) * math.log(max(float(x), 1e-12)) for x in p)
    assert swir_entropy(p) == pytest.approx(want, rel=1e-14, abs=0)
    assert swir_entropy(p) != pytest.approx(-sum(float(x) * math.log(max(float(x), 2e-12))
                                                 for x in p), rel=1e-14, abs=0)


def test_step_without_a_precomputed_entropy_computes_it():
    from led_local.decoding.swir import swir_entropy, swir_step

    p = np.array([0.5, 0.25, 0.25, 0, 0, 0, 0, 0])
    step = swir_step(SwirState(), p, 1, closes=False, cfg=SwirConfig(), vocab=VOCAB,
                     max_new=S_MAX)
    assert step.entropy == swir_entropy(p) == pytest.approx(1.5 * math.log(2))


def test_equal_entropy_does_not_leave_explicit_mode():
    """explicit -> latent needs H > ref, strictly: after the window, the same entropy as at the
    switch keeps the sequence explicit; a higher one switches."""
    cfg = SwirConfig(window=1)
    out = list(_drive([(1, 2.0), (2, 3.0), (2, 3.0), (2, 3.0), (3, 1.0)], cfg))
    modes = [state[0] for _, state, _ in out]
    assert modes == [LATENT, EXPLICIT, EXPLICIT, EXPLICIT, LATENT]


def test_switch_control_counts_a_switch_at_step_one():
    """With max_switch 1 the first latent -> explicit switch already queues the convergence
    text, at whatever step it happens (here step 1), from the next step on."""
    cfg = SwirConfig(window=3, max_switch=1)
    out = list(_drive([(1, 2.0), (2, 3.0), (3, 3.0)], cfg))
    assert out[1][0].to_explicit and [st.token for st, _, _ in out] == [1, 2, 6]


def test_feed_token_only_for_one_whole_token_row():
    from led_local.decoding.swir import Feed

    assert Feed(0.0, ((3, 1.0),)).token == 3
    assert Feed(0.5, ((3, 1.0),)).token is None
    assert Feed(0.0, ((3, 0.5),)).token is None
    assert Feed(0.0, ((3, 0.5), (4, 0.5))).token is None
    assert Feed(1.0, ()).token is None


def test_configuration_defaults_and_checks():
    from dataclasses import FrozenInstanceError

    from led_local.decoding import swir
    from led_local.decoding.methods import DecodeConfig

    cfg = SwirConfig()
    assert cfg.budget == 32  # docs/SWIR.md: "a budget of 32 tokens"
    assert "budget of 32 tokens" in (Path(__file__).resolve().parent.parent / "docs"
                                     / "SWIR.md").read_text()
    assert SwirConfig(budget=1).budget == 1
    with pytest.raises(LedError):
        SwirConfig(budget=0)
    assert hash(cfg) == hash(SwirConfig()) and hash(VOCAB) == hash(VOCAB)
    with pytest.raises(FrozenInstanceError):
        cfg.window = 3
    exact = DecodeConfig(method="swir")
    approx = DecodeConfig(method="swir", swir=SwirConfig(top_mass=0.9))
    assert "swir_top_mass" not in exact.params()
    assert approx.params()["swir_top_mass"] == 0.9
    assert swir.METHOD.full_records(exact)


def test_the_exact_soft_token_refuses_rows_read_on_demand():
    from led_local.errors import ConfigError

    class Rows:  # rows read from a file: not a matrix
        shape = (8, 8)

        def __getitem__(self, ids):
            return E[ids]

    p = np.full((1, 8), 1 / 8, np.float32)
    with pytest.raises(ConfigError):
        soft_vectors(p, Rows(), top_mass=1.0)
    np.testing.assert_allclose(soft_vectors(p, Rows(), top_mass=0.99), p, atol=1e-6)


def test_per_request_checks_and_the_end_of_a_forced_answer():
    from types import SimpleNamespace

    from led_local.decoding import swir
    from led_local.decoding.methods import DecodeConfig
    from led_local.errors import ConfigError

    mine = DecodeConfig(method="swir")
    engine = SimpleNamespace(shared={}, cfg=mine)
    with pytest.raises(LedError, match="needs the input embeddings"):
        swir.METHOD.check(engine, mine)
    engine.shared[swir.NAME] = object()
    swir.METHOD.check(engine, mine)  # the engine's own settings pass
    with pytest.raises(ConfigError):
        swir.METHOD.check(engine, DecodeConfig(method="swir", swir=SwirConfig(top_mass=0.5)))

    def seq(stop, reason):
        return SimpleNamespace(trace=SimpleNamespace(stop=stop), finish_reason=reason,
                               done=reason is not None)

    for stop, reason, want in ((True, None, "stop"), (False, None, None),
                               (True, "length", "length")):
        s = seq(stop, reason)
        swir.METHOD.after_accept(None, s)
        assert s.finish_reason == want
    trace = SimpleNamespace(report=lambda full: {"full": full})
    assert swir.METHOD.record(SimpleNamespace(trace=trace), mine) == {"swir": {"full": False}}


def test_the_latent_blend_marker_follows_the_chat_format():
    from types import SimpleNamespace

    from led_local.decoding.swir import think_start

    fmt = SimpleNamespace(think_start="<seed:think>", think_end="</seed:think>")
    assert think_start(fmt, "</seed:think>") == "<seed:think>"
    assert think_start(fmt, "</done>") == "<think>"  # another end marker: the default
    assert think_start(SimpleNamespace(think_start=None, think_end=None), None) == "<think>"


def test_switch_control_ranges_scale_with_max_switch():
    """max_switch 2: the latent -> explicit switches 2..4 queue the convergence text, the
    fifth the termination text and starts the answer budget."""
    from led_local.decoding.swir import swir_step

    vocab = SwirVocab(5, 6, 7, frozenset(), converge=(6,), terminate=(6, 7, 1))
    cfg = SwirConfig(window=0, max_switch=2, budget=50)
    state, low, high = SwirState(), np.full(8, 1 / 8), np.array([0.9] + [0.1 / 7] * 7)
    events = {}
    for s in range(10):  # flat, peaked, flat, ...: a switch either way at every step
        step = swir_step(state, low if s % 2 == 0 else high, 1, closes=False, cfg=cfg,
                         vocab=vocab, max_new=100)
        if step.to_explicit:
            events[state.count] = (list(state.queue), state.budget)
    assert events == {1: ([], -1), 2: ([6], -1), 3: ([6], -1), 4: ([6], -1),
                      5: ([6, 7, 1], 49)}


def test_a_swir_engine_holds_the_exact_embeddings_and_decodes(tmp_path):
    """The engine's own setup: the float32 input rows (resident) for the exact soft token,
    the model's ids for the state machine, a few sampled steps with latent ones among them."""
    from tinymodel import write_tiny_llama

    from led_local.decoding import swir
    from led_local.decoding.engine import Engine
    from led_local.decoding.methods import build_config

    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=2, seed=3)
    cfg = build_config("swir", {"swir_window": 1, "think_end": ""})
    with Engine(tiny.path, cfg, n_ctx=96) as engine:
        assert isinstance(engine.embeddings, np.ndarray)
        assert swir.NAME in engine.shared
        prompt = engine.rt.tokenize("the answer is")
        engine.prefill(0, prompt)
        seq = engine.new_sequence(0, seed=(2,), max_tokens=12)
        engine.start(seq, len(prompt))
        while not seq.done:
            engine.step([seq])
        report = swir.METHOD.record(seq, engine.cfg, full=True)["swir"]
        assert seq.tokens and report
