"""DoLa (led_local/decoding/dola.py) against an independent numpy transcription of Hugging Face
transformers' ``_dola_select_contrast`` / ``_relative_top_filter`` and its layer choice."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from led_local.decoding import dola
from led_local.llama.gguf_info import ModelInfo

CHI2_LIMIT = 30.0  # p < 1e-3 for up to 10 degrees of freedom


def hf_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def hf_kl_div(log_input: np.ndarray, target: np.ndarray) -> np.ndarray:
    """torch F.kl_div(input, target, reduction="none"): target * (log target - input), 0 at 0."""
    safe = np.where(target > 0, target, 1.0)
    return np.where(target > 0, target * (np.log(safe) - log_input), 0.0)


def hf_relative_top_filter(scores, baseline, relative_top=0.1, filter_value=-np.inf,
                           base_filter_value=-1e-3, min_tokens_to_keep=1):
    scores_normalized = hf_log_softmax(scores)
    baseline_normalized = hf_log_softmax(baseline)
    sorted_logits = -np.sort(-scores_normalized, axis=-1)
    min_thresh = sorted_logits[..., min_tokens_to_keep - 1]
    probs_thresh = scores_normalized.max(axis=-1) + np.log(relative_top)
    probs_thresh = np.minimum(min_thresh, probs_thresh)[..., None]
    mask = scores_normalized < probs_thresh
    baseline_normalized[mask] = base_filter_value
    scores_normalized[mask] = filter_value
    return scores_normalized, baseline_normalized


def hf_dola_select_contrast(layers: list[int], premature: dict, final: np.ndarray):
    """final: (batch, V); premature[layer]: (batch, V). Returns (scores, chosen layer)."""
    if len(layers) == 1:
        chosen = layers[0]
    else:
        stacked = np.stack([premature[i] for i in layers], axis=0)
        avg = 0.5 * (np.exp(hf_log_softmax(final))[None] + np.exp(hf_log_softmax(stacked)))
        kl1 = hf_kl_div(hf_log_softmax(final)[None], avg).mean(-1)
        kl2 = hf_kl_div(hf_log_softmax(stacked), avg).mean(-1)
        js = (0.5 * (kl1 + kl2)).mean(-1)  # batch mean: one row here
        chosen = layers[int(js.argmax())]
    f, b = hf_relative_top_filter(final, premature[chosen])
    return f - b, chosen


def hf_candidate_layers(n: int, tied: bool, which: str) -> list[int]:
    """transformers' _dola_decoding: candidate premature layers for dola_layers low/high."""
    if not tied:
        start = 0
    elif n > 2:
        start = 2
    elif n == 2:
        start = 1
    else:
        start = 0
    if which == "low":
        if start == n // 2:
            return [start]
        return list(range(start, n // 2, 2)) if n <= 40 else list(range(start, 20, 2))
    return list(range(n // 2, n, 2)) if n <= 40 else list(range(n - 20, n, 2))


def reference(final: np.ndarray, premature: np.ndarray):
    layers = list(range(len(premature)))
    scores, chosen = hf_dola_select_contrast(
        layers, {i: premature[i][None] for i in layers}, final[None])
    return scores[0], chosen


def random_case(seed: int, m: int, v: int = 64):
    rng = np.random.default_rng(seed)
    final = rng.normal(0.0, 3.0, v)
    premature = rng.normal(0.0, 1.0, (m, v)) * rng.uniform(0.5, 4.0, (m, 1))
    return final, premature


def assert_same_scores(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    assert np.isfinite(got[finite]).all()
    assert np.allclose(got[finite], want[finite], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("m", [1, 2, 5, 8])
@pytest.mark.parametrize("seed", range(12))
def test_contrast_matches_transformers(seed, m):
    final, premature = random_case(seed, m)
    assert_same_scores(dola.contrast(final, premature), reference(final, premature)[0])


def test_premature_layer_is_the_max_js_divergence_one():
    chosen = set()
    for seed in range(40):
        final, premature = random_case(seed, 6)
        js = dola.js_divergences(final, premature)
        want, layer = reference(final, premature)
        assert int(np.argmax(js)) == layer
        assert_same_scores(dola.contrast(final, premature), want)
        chosen.add(layer)
    assert len(chosen) > 1  # the selection is really exercised


def test_js_divergence_hand_values():
    final = np.log(np.array([0.5, 0.5]))
    same, other = final, np.log(np.array([0.9, 0.1]))
    m = np.array([0.7, 0.3])
    kl_final = (m * (np.log(m) - final)).mean()
    kl_other = (m * (np.log(m) - other)).mean()
    js = dola.js_divergences(final, np.stack([same, other]))
    assert js == pytest.approx([0.0, 0.5 * (kl_final + kl_other)], abs=1e-12)


def test_relative_top_filter_by_hand():
    # final probabilities 0.6, 0.3, 0.05, 0.05: keep p >= 0.06, i.e. the first two tokens.
    final = np.log(np.array([0.6, 0.3, 0.05, 0.05]))
    premature = np.log(np.array([[0.25, 0.5, 0.125, 0.125]]))
    scores = dola.contrast(final, premature)
    assert scores[0] == pytest.approx(math.log(0.6 / 0.25))
    assert scores[1] == pytest.approx(math.log(0.3 / 0.5))
    assert np.isneginf(scores[2:]).all()


def test_single_candidate_skips_the_divergence(monkeypatch):
    def boom(*_args):
        raise AssertionError("js_divergences called for a single candidate layer")

    final, premature = random_case(3, 1)
    monkeypatch.setattr(dola, "js_divergences", boom)
    assert_same_scores(dola.contrast(final, premature), reference(final, premature)[0])


def config(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0):
    return SimpleNamespace(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)


@pytest.mark.parametrize("seed", range(20))
def test_greedy_pick_is_reference_argmax(seed):
    final, premature = random_case(seed, 4)
    rng = np.random.default_rng(0)
    want = int(np.argmax(reference(final, premature)[0]))
    assert dola.pick(final, premature, config(), rng) == want
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # no draw


def test_pick_seed_reproducibility():
    cfg = config(temperature=0.7, top_k=20, top_p=0.95, min_p=0.02)
    cases = [random_case(seed, 4, v=40) for seed in range(5)]

    def run(seed):
        rng = np.random.default_rng(seed)
        return [dola.pick(f, p, cfg, rng) for f, p in cases for _ in range(30)]

    first = run(11)
    assert first == run(11)
    assert first != run(12)
    for i, (f, p) in enumerate(cases):
        kept = np.isfinite(dola.contrast(f, p))
        assert all(kept[t] for t in first[30 * i:30 * (i + 1)])  # never a filtered token


def hf_warped_probs(scores: np.ndarray, cfg) -> np.ndarray:
    """transformers' warpers after DoLa: temperature, top-k, top-p, min-p, then softmax."""
    z = scores / cfg.temperature
    if cfg.top_k:
        z = np.where(z < np.sort(z)[-cfg.top_k], -np.inf, z)
    if cfg.top_p < 1:
        order = np.argsort(z, kind="stable")
        cum = np.cumsum(np.exp(hf_log_softmax(z[order])))
        remove = cum <= 1 - cfg.top_p
        remove[-1] = False
        z = z.copy()
        z[order[remove]] = -np.inf
    if cfg.min_p:
        p = np.exp(hf_log_softmax(z))
        z = np.where(p < cfg.min_p * p.max(), -np.inf, z)
    return np.exp(hf_log_softmax(z))


@pytest.mark.parametrize("cfg", [
    config(temperature=1.0), config(temperature=0.5, top_k=4),
    config(temperature=1.3, top_p=0.8), config(temperature=1.0, min_p=0.2),
])
def test_pick_samples_the_warped_contrast_distribution(cfg):
    rng = np.random.default_rng(0)
    final = rng.normal(0.0, 1.2, 12)
    premature = rng.normal(0.0, 1.0, (3, 12))
    probs = hf_warped_probs(reference(final, premature)[0], cfg)
    assert (probs > 0).sum() >= 2
    picks = [dola.pick(final, premature, cfg, rng) for _ in range(10000)]
    counts = np.bincount(picks, minlength=12)
    assert counts[probs == 0].sum() == 0
    kept = probs > 0
    expected = probs[kept] * counts.sum()
    assert float(((counts[kept] - expected) ** 2 / expected).sum()) < CHI2_LIMIT


def model_info(n_layer: int, tied: bool) -> ModelInfo:
    return ModelInfo(
        path=Path("tiny.gguf"), name="tiny", architecture="llama", n_layer=n_layer, n_embd=8,
        n_vocab=16, head_tensor="token_embd.weight" if tied else "output.weight",
        head_type="F32", tied=tied, chat_template=None, norm_eps=1e-5, final_softcap=0.0,
        logit_scale=1.0, has_output_bias=False, norm_is_layernorm=False, gguf=None,
    )


@pytest.mark.parametrize("which", ["low", "high"])
@pytest.mark.parametrize("tied", [False, True])
def test_dola_layers_follow_transformers_rule(tied, which):
    for n in range(1, 97):
        assert model_info(n, tied).dola_hidden_indices(which) == hf_candidate_layers(n, tied, which)


@pytest.mark.parametrize(("n", "tied", "which", "expected"), [
    (32, False, "low", list(range(0, 16, 2))),
    (32, True, "low", [2, 4, 6, 8, 10, 12, 14]),
    (32, True, "high", [16, 18, 20, 22, 24, 26, 28, 30]),
    (48, True, "low", [2, 4, 6, 8, 10, 12, 14, 16, 18]),
    (48, False, "high", list(range(28, 48, 2))),
    (4, True, "low", [2]),  # start == N // 2
    (2, True, "low", [1]),
    (1, True, "low", [0]),
    (40, False, "high", list(range(20, 40, 2))),
    (41, False, "high", list(range(21, 41, 2))),
])
def test_dola_layers_hand_examples(n, tied, which, expected):
    assert model_info(n, tied).dola_hidden_indices(which) == expected


# -- ties, the repetition penalty, the LED paper's variant ------------------------------------

def hf_repetition_penalty(scores: np.ndarray, context: list[int], penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor on one row, in plain Python."""
    out = [float(x) for x in scores]
    for t in set(context):
        out[t] = out[t] * penalty if out[t] < 0 else out[t] / penalty
    return np.array(out)


def test_top_k_keeps_the_tokens_tied_at_the_kth_score():
    # equal final logits against a uniform premature layer: the first three scores are equal
    # bit for bit (log 0.3/0.25), the fourth lower (log 0.1/0.25): k = 1 keeps the three
    final = np.log(np.array([0.3, 0.3, 0.3, 0.1]))
    premature = np.zeros((1, 4))
    scores = dola.contrast(final, premature)
    assert scores[0] == scores[1] == scores[2] > scores[3] > -np.inf
    picks = {dola.pick(final, premature, config(temperature=1.0, top_k=1),
                       np.random.default_rng(s)) for s in range(200)}
    assert picks == {0, 1, 2}


@pytest.mark.parametrize("penalty", [1.2, 0.8])
def test_repetition_penalty_is_transformers_processor_before_the_warpers(penalty):
    final, premature = random_case(4, 3, v=30)
    scores = reference(final, premature)[0]
    kept = np.flatnonzero(np.isfinite(scores))
    context = [int(kept[0]), int(kept[1]), int(kept[1]), 29, 0]
    want = hf_repetition_penalty(scores, context, penalty)
    assert not np.array_equal(want, scores)
    got = dola.penalize(dola.contrast(final, premature), np.array(context), penalty)
    assert_same_scores(got, want)
    # greedy: the argmax of the penalised scores, no draw
    assert dola.pick(final, premature, config(), np.random.default_rng(0), penalty=penalty,
                     context=np.array(context)) == int(np.argmax(want))
    # sampled: the warped penalised distribution, draw for draw
    cfg = config(temperature=0.8, top_k=5)
    probs = hf_warped_probs(want, cfg)
    order = np.argsort(-probs, kind="stable")[: int((probs > 0).sum())]
    for seed in range(100):
        u = np.random.default_rng(seed).random()
        i = min(int(np.searchsorted(np.cumsum(probs[order]), u, side="right")),
                len(order) - 1)
        got = dola.pick(final, premature, cfg, np.random.default_rng(seed), penalty=penalty,
                        context=np.array(context))
        assert got == int(order[i])


def led_paper_reference(final, premature, t, u):
    """The LED paper's dola_decoding (led/decoding.py) on one row: every layer / T unless
    greedy, transformers' contrast, then multinomial over softmax(contrast) (the draw with u)."""
    if t > 0:
        final, premature = final / t, premature / t
    scores = reference(final, premature)[0]
    if t <= 0:
        return int(np.argmax(scores))
    p = np.exp(scores - scores[np.isfinite(scores)].max())
    p = np.where(np.isfinite(scores), p, 0.0)
    p /= p.sum()
    return int(np.searchsorted(np.cumsum(p), u, side="right"))


@pytest.mark.parametrize("t", [0.6, 0.0, 1.3])
def test_led_paper_variant_is_the_papers_baseline(t):
    for case in range(6):
        final, premature = random_case(case, 4, v=40)
        for seed in range(40):
            u = np.random.default_rng(seed).random()
            got = dola.pick(final, premature, config(temperature=t),
                            np.random.default_rng(seed), variant="led-paper")
            assert got == led_paper_reference(final, premature, t, u)
    # the division by T changes the contrast itself, not only the sampling temperature
    final, premature = random_case(2, 4, v=40)
    assert not np.array_equal(np.isfinite(dola.contrast(final / 0.3, premature / 0.3)),
                              np.isfinite(dola.contrast(final, premature)))


@pytest.mark.parametrize(("n", "tied", "expected"), [
    (32, True, [1, 3, 5, 7, 9, 11, 13]),  # transformers' 2, 4, ..., 14, each read one lower
    (32, False, [0, 1, 3, 5, 7, 9, 11, 13]),  # layer 0 (the embeddings) stays 0
    (4, True, [1]),
])
def test_led_paper_reads_layer_c_from_the_hidden_state_before_it(n, tied, expected):
    from led_local.decoding.methods import build_config

    cfg = build_config("dola", {"dola_variant": "led-paper"})
    assert cfg.dola_layers == "low"
    assert dola.METHOD.layers(model_info(n, tied), cfg) == expected
    hf = build_config("dola", {})
    assert dola.METHOD.layers(model_info(n, tied), hf) == hf_candidate_layers(n, tied, "low")


@pytest.mark.parametrize(("option", "value"), [("top_k", 20), ("top_p", 0.9), ("min_p", 0.1),
                                                ("repetition_penalty", 1.2)])
def test_led_paper_refuses_filters_and_the_penalty(option, value):
    from led_local.decoding.methods import build_config
    from led_local.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        build_config("dola", {"dola_variant": "led-paper", option: value})
    assert e.value.option == option and "led-paper" in e.value.message
    build_config("dola", {option: value})  # hf applies them


def test_premature_logits_leave_out_the_heads_extras_and_the_graph_says_so():
    from dataclasses import replace

    from led_local.decoding.methods import build_config
    from led_local.errors import LedError
    from led_local.llama import native, projection

    hf, paper = build_config("dola", {}), build_config("dola", {"dola_variant": "led-paper"})
    assert not dola.METHOD.head_extras(hf) and dola.METHOD.head_extras(paper)
    plain = model_info(8, True)
    capped = replace(plain, final_softcap=30.0)
    assert dola.METHOD.graph_refusal(plain, hf) is None
    assert dola.METHOD.graph_refusal(capped, paper) is None
    refusal = dola.METHOD.graph_refusal(capped, hf)
    assert "soft-capping" in refusal
    saved = native.projection_patch_version, projection.offloaded
    try:
        native.projection_patch_version, projection.offloaded = (lambda: 2), (lambda: True)
        assert projection.resolve_projection("auto", capped, refusal) == "host"
        assert projection.resolve_projection("auto", capped, None) == "graph"
        with pytest.raises(LedError, match="use projection host"):
            projection.resolve_projection("graph", capped, refusal)
    finally:
        native.projection_patch_version, projection.offloaded = saved


# -- what mutation testing found untested (bench/mutate.py) ---------------------------------

def test_contrast_and_divergences_stay_finite_for_huge_or_vanishing_logits():
    """log-softmax shifts by the maximum (logits of 1000 would overflow otherwise), and a
    token whose probability underflows to 0 in both layers adds nothing to the divergence."""
    final = np.array([1000.0, 999.0, -2000.0, 990.0])
    premature = np.array([[1000.0, 1000.0, -3000.0, 980.0], [500.0, 400.0, -900.0, 0.0]])
    js = dola.js_divergences(final, premature)
    assert np.isfinite(js).all() and js[1] > js[0] > 0
    assert_same_scores(dola.contrast(final, premature), reference(final, premature)[0])


def test_a_token_exactly_a_tenth_of_the_top_stays_in_the_contrast():
    # log p = z - lse bit for bit: token 1's log-probability equals the threshold
    # log p_max + log 0.1 exactly, and transformers filters only what is below it
    final = np.array([0.0, np.log(0.1), -5.0])
    lf = final - np.log(np.exp(final).sum())
    assert lf[1] == lf[0] + np.log(0.1)
    scores = dola.contrast(final, np.zeros((1, 3)))
    assert np.isfinite(scores[:2]).all() and np.isneginf(scores[2])


@pytest.mark.parametrize("penalty", [2.0, 1.5])
def test_repetition_penalty_on_every_kind_of_score(penalty):
    """Positive scores divided, negative ones multiplied (a score in (0, 1) too), token 0 and
    a context of one token included; -1 (a fed vector) and the rest untouched."""
    scores = np.array([0.5, -0.4, 2.0, -np.inf, 3.0, -1.5])
    got = dola.penalize(scores, np.array([0, 1, 2, 3, -1, 0]), penalty)
    np.testing.assert_allclose(got, [0.5 / penalty, -0.4 * penalty, 2.0 / penalty, -np.inf,
                                     3.0, -1.5], rtol=1e-15)
    one = dola.penalize(scores, np.array([4]), penalty)
    assert one[4] == 3.0 / penalty and np.array_equal(np.delete(one, 4), np.delete(scores, 4))
    assert np.array_equal(dola.penalize(scores, np.array([], np.int64), penalty), scores)
    assert np.array_equal(dola.penalize(scores, np.array([0, 1]), 1.0), scores)


@pytest.mark.parametrize("t", [0.002, 0.01])
def test_tiny_temperatures_do_not_overflow(t):
    """At a tiny T the tempered contrast spans thousands of nats: both variants shift by the
    maximum before exponentiating, and draw what the reference draws."""
    final, premature = random_case(1, 3, v=30)
    for seed in range(20):
        u = np.random.default_rng(seed).random()
        got = dola.pick(final, premature, config(temperature=t), np.random.default_rng(seed),
                        variant="led-paper")
        assert got == led_paper_reference(final, premature, t, u)
        probs = hf_warped_probs(reference(final, premature)[0], config(temperature=t))
        order = np.argsort(-probs, kind="stable")[: int((probs > 0).sum())]
        want = order[min(int(np.searchsorted(np.cumsum(probs[order]), u, side="right")),
                         len(order) - 1)]
        assert dola.pick(final, premature, config(temperature=t),
                         np.random.default_rng(seed)) == want


def test_dola_reads_states_every_step_and_runs_in_the_engine(tmp_path):
    """The unit asks for hidden states at every step and picks from them on the host (a tiny
    generated model, greedy and sampled, both variants)."""
    from tinymodel import write_tiny_llama

    from led_local.decoding.engine import Engine
    from led_local.decoding.methods import build_config
    from led_local.eval.planning import SolveOptions, fingerprint

    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=3, seed=4)
    for given in ({"temperature": 0.0}, {"dola_variant": "led-paper"},
                  {"repetition_penalty": 1.3, "top_k": 5}):
        cfg = build_config("dola", given)
        assert dola.METHOD.reads_states and dola.METHOD.wants_states(None, cfg)
        assert "depth_logits" in fingerprint(tiny.path, cfg, SolveOptions(samples=1), "{q}")
        with Engine(tiny.path, cfg, n_ctx=64, projection="host") as engine:
            assert engine.graph is None and engine.layers
            prompt = engine.rt.tokenize("the answer is")
            engine.prefill(0, prompt)
            seq = engine.new_sequence(0, seed=(1,), max_tokens=6)
            engine.start(seq, len(prompt))
            while not seq.done:
                engine.step([seq])
            assert seq.tokens and all(0 <= t < engine.info.n_vocab for t in seq.tokens)
            assert engine.context(seq)[:len(prompt)] == prompt
    assert "depth_logits" not in fingerprint(tiny.path, build_config("sample", {}),
                                             SolveOptions(samples=1), "{q}")


def test_a_request_at_the_neutral_penalty_is_no_dola_request():
    from led_local.decoding.methods import build_config
    from led_local.serve.protocol import APIError, CompletionRequest

    base = build_config("led", {})
    assert CompletionRequest(prompt="hi", repetition_penalty=1.0).decode_config(base) == base
    with pytest.raises(APIError):
        CompletionRequest(prompt="hi", repetition_penalty=2.0).decode_config(base)


class Fixed(np.random.Generator):
    """A Generator whose every ``random()`` is ``u``."""

    def __init__(self, u: float) -> None:
        super().__init__(np.random.PCG64(0))
        self.u = u

    def random(self, *args, **kwargs):
        return self.u


def test_top_p_keeps_the_smallest_set_reaching_p_as_transformers():
    """Four equal scores: top-p 0.5 keeps two tokens (transformers removes those whose
    ascending cumulative mass is <= 1 - p), and a draw on the boundary takes the next one."""
    final, premature = np.zeros(4), np.zeros((1, 4))
    cfg = config(temperature=1.0, top_p=0.5)
    probs = hf_warped_probs(dola.contrast(final, premature), cfg)
    assert (probs > 0).sum() == 2
    picks = {dola.pick(final, premature, cfg, np.random.default_rng(s)) for s in range(100)}
    assert picks == {0, 1}  # which of equal scores survive: ours by lower id
    assert dola.pick(final, premature, config(temperature=1.0), Fixed(0.5)) == 2


def test_min_p_keeps_at_least_the_top_token():
    final, premature = np.array([5.0, 0.0, 0.0]), np.zeros((1, 3))
    picks = {dola.pick(final, premature, config(temperature=1.0, min_p=0.999),
                       np.random.default_rng(s)) for s in range(50)}
    assert picks == {0}


def test_the_engine_hands_the_penalty_the_prompt_and_response(tmp_path, monkeypatch):
    from tinymodel import write_tiny_llama

    from led_local.decoding.engine import Engine
    from led_local.decoding.methods import build_config

    calls = []
    original = dola.penalize

    def spy(scores, context, penalty):
        calls.append((None if context is None else list(context), penalty))
        return original(scores, context, penalty)

    monkeypatch.setattr(dola, "penalize", spy)
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=3, seed=4)
    cfg = build_config("dola", {"repetition_penalty": 2.0, "temperature": 0.0})
    with Engine(tiny.path, cfg, n_ctx=64, projection="host") as engine:
        prompt = engine.rt.tokenize("the answer is")
        engine.prefill(0, prompt)
        seq = engine.new_sequence(0, seed=(1,), max_tokens=3)
        engine.start(seq, len(prompt))
        while not seq.done:
            engine.step([seq])
    assert calls and all(p == 2.0 for _, p in calls)
    assert calls[0][0] == prompt and calls[-1][0][:len(prompt)] == prompt
    assert len(calls[-1][0]) == len(prompt) + len(calls) - 1


def test_kept_tokens_a_thousand_nats_apart_at_a_tiny_temperature():
    """Three tokens pass the relative-top filter; at T = 0.01 the premature layer puts the
    third a thousand nats below two that differ by 0.5: both variants shift by the maximum
    before exponentiating and draw the first two (and never overflow into one)."""
    final = np.array([5.0, 5.0, 5.0, 0.0])
    premature = np.array([[-10.0, -9.995, 0.0, 10.0]])
    for variant in ("hf", "led-paper"):
        picks = {dola.pick(final, premature, config(temperature=0.01),
                           np.random.default_rng(s), variant=variant) for s in range(60)}
        assert picks == {0, 1}, variant


def test_min_p_keeps_the_top_token_and_every_token_tied_with_it():
    # two kept tokens with p = (0.62, 0.38): min-p 0.9 leaves the first
    final, premature = np.array([1.0, 0.5, -9.0]), np.zeros((1, 3))
    picks = {dola.pick(final, premature, config(temperature=1.0, min_p=0.9),
                       np.random.default_rng(s)) for s in range(60)}
    assert picks == {0}
    # two equal top tokens: min-p 1 keeps both (p >= 1 x the top)
    final = np.array([0.0, 0.0, -9.0])
    picks = {dola.pick(final, premature, config(temperature=1.0, min_p=1.0),
                       np.random.default_rng(s)) for s in range(60)}
    assert picks == {0, 1}


def test_pick_defaults_are_transformers_without_a_penalty():
    final = np.linspace(1.0, -1.0, 20)  # several tokens pass the relative-top filter
    premature = np.random.default_rng(3).normal(0, 1, (3, 20))
    assert np.isfinite(dola.contrast(final, premature)).sum() > 5
    context = np.arange(20)
    for seed in range(20):
        cfg = config(temperature=0.9)
        assert dola.pick(final, premature, cfg, np.random.default_rng(seed), context=context) \
            == dola.pick(final, premature, cfg, np.random.default_rng(seed), variant="hf",
                         penalty=1.0)
