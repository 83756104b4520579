"""LED sampler (led_local/decoding/samplers.py) on tiny hand-made distributions: every
expected value comes from plain-Python math written here from LED.md, never from the
module's own helpers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from led_local.decoding.samplers import (
    LEDConfig,
    led_base,
    led_explore,
    led_sample,
    token_logprob,
    top_candidates,
)
from led_local.errors import LedError

# d = 3 depths, V = 5 tokens; depth 0 is the final layer.
Z = [
    [2.0, 1.5, 0.9, -1.0, 0.0],
    [0.0, 2.0, 0.5, 0.0, -0.5],
    [-0.5, 0.3, 2.5, 1.0, 0.0],
]
CHI2_LIMIT = 20.0  # p < 1e-3 for up to 4 degrees of freedom


def softmax(row: list[float], t: float) -> list[float]:
    scale = 1.0 / t if t > 0 else 1.0  # greedy: no division by T
    top = max(row)
    e = [math.exp((z - top) * scale) for z in row]
    return [x / sum(e) for x in e]


def reference(z: list[list[float]], t: float, k: int, floor: float = 1e-6) -> SimpleNamespace:
    """LED.md steps 1, 2, 4, 5, 6 in plain Python."""
    p = [softmax(row, t) for row in z]
    cand = sorted(range(len(z[0])), key=lambda i: (-p[0][i], i))[:k]
    running, s = [0.0] * k, []
    for pj in p:
        running = [r + max(pj[c], floor) for r, c in zip(running, cand, strict=True)]
        s.append([r / sum(running) for r in running])
    h = [-sum(x * math.log(max(x, 1e-9)) for x in sj) for sj in s]
    return SimpleNamespace(cand=cand, q=[p[0][c] for c in cand], s=s, h=h, j=h.index(max(h)))


def inverse_cdf(weights: list[float], u: float) -> int:
    """Index i with cdf[i-1] <= u * total < cdf[i]: a draw proportional to weights."""
    acc, target = 0.0, u * sum(weights)
    for i, w in enumerate(weights):
        acc += w
        if target < acc:
            return i
    return len(weights) - 1


def chi2(counts: np.ndarray, probs: list[float]) -> float:
    expected = np.asarray(probs) / sum(probs) * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def base(t: float, *, k: int = 3, exploit: bool = True, in_scope: bool = True, rng=None):
    rng = np.random.default_rng(0) if rng is None else rng
    return led_base(np.array(Z[0]), temperature=t, k=k, exploit=exploit, in_scope=in_scope,
                    rng=rng)


@pytest.mark.parametrize("t", [0.6, 1.0, 0.0])
def test_candidates_and_q_are_top_k_of_final_layer(t):
    ref = reference(Z, t, 3)
    step = base(t)
    assert ref.cand == [0, 1, 2]
    assert step.candidates.tolist() == ref.cand
    assert step.q == pytest.approx(ref.q, rel=1e-6)
    assert step.q.sum() < 1.0  # not renormalised over the candidates


@pytest.mark.parametrize("t", [0.6, 1.0, 0.0])
def test_depth_posteriors_and_entropies_match_hand_computation(t):
    ref = reference(Z, t, 3)
    step = led_explore(np.array(Z), np.array(ref.cand), temperature=t,
                       rng=np.random.default_rng(0))
    assert np.allclose(step.posteriors, ref.s, rtol=1e-6, atol=0)
    assert np.allclose(step.posteriors.sum(axis=1), 1.0)
    assert np.allclose(step.entropies, ref.h, rtol=1e-6, atol=0)
    assert step.depth == ref.j == 2


def test_greedy_takes_argmax_without_temperature_division():
    ref = reference(Z, 0.0, 3)
    assert base(0.0).base == 0
    step = led_explore(np.array(Z), np.array(ref.cand), temperature=0.0,
                       rng=np.random.default_rng(0))
    # S_2 at T = 0 is (0.230, 0.388, 0.382): the argmax candidate, not the base token.
    assert step.depth == 2 and step.token == 1
    # dividing by a tiny T instead would make every depth one-hot and change S entirely
    assert reference(Z, 1e-3, 3).s[2] != pytest.approx(step.posteriors[2].tolist(), rel=1e-3)


def test_first_max_depth_wins_ties():
    # Exact probabilities 1 and floored 1e-6 make S_1 = S_2 = (0.5, 0.5) bit for bit.
    z = np.array([[0.0, -200.0, -300.0], [-300.0, 0.0, -300.0], [-300.0, -300.0, 0.0]])
    step = led_explore(z, np.array([0, 1]), temperature=0.0, rng=np.random.default_rng(0))
    assert step.posteriors[1].tolist() == step.posteriors[2].tolist() == [0.5, 0.5]
    assert step.entropies[0] < step.entropies[1] == step.entropies[2] == pytest.approx(math.log(2))
    assert step.depth == 1 == reference(z.tolist(), 0.0, 2).j
    assert step.token == 0  # argmax ties go to the first (more probable) candidate too


def test_probability_floor_decides_the_depth():
    # Depth 1 puts its mass on a non-candidate: only the 1e-6 floor makes S_1 differ from S_0.
    z = np.array([[0.0, -200.0, -300.0], [-300.0, -300.0, 0.0]])
    step = led_explore(z, np.array([0, 1]), temperature=0.0, rng=np.random.default_rng(0))
    assert step.posteriors[0] == pytest.approx([1 / (1 + 1e-6), 1e-6 / (1 + 1e-6)], rel=1e-12)
    assert step.posteriors[1] == pytest.approx([(1 + 1e-6) / (1 + 3e-6), 2e-6 / (1 + 3e-6)],
                                               rel=1e-12)
    ref = reference(z.tolist(), 0.0, 2)
    assert step.entropies == pytest.approx(ref.h, rel=1e-9)  # H_0 is only about 1.5e-5
    assert step.depth == 1 == ref.j
    assert reference(z.tolist(), 0.0, 2, floor=0.0).j == 0  # without the floor: depth 0


# d = 4: the most uncertain depth is j* = 1, not the last one, and S_1 and S_3 disagree on
# which candidate is likeliest (found by search, checked by the plain-Python reference)
Z_MID = [
    [-0.7, -0.1, -2.2, -0.2, 0.3],
    [0.0, -1.8, -0.5, -1.0, -1.9],
    [-2.0, -0.1, -1.1, 3.0, 0.2],
    [0.4, -0.1, -1.0, 1.2, 0.8],
]


@pytest.mark.parametrize("t", [0.6, 0.0])
def test_exploration_draws_from_the_max_entropy_depth_not_the_last(t):
    ref = reference(Z_MID, t, 3)
    assert ref.j == 1 and np.argmax(ref.s[1]) != np.argmax(ref.s[3])
    cand = np.array(ref.cand)
    for seed in range(200):
        step = led_explore(np.array(Z_MID), cand, temperature=t,
                           rng=np.random.default_rng(seed))
        u = np.random.default_rng(seed).random()
        want = inverse_cdf(ref.s[1], u) if t > 0 else int(np.argmax(ref.s[1]))
        assert (step.depth, step.token) == (1, ref.cand[want])
        assert step.posteriors[1].tolist() == pytest.approx(ref.s[1], rel=1e-6)


def test_base_token_sampled_proportionally_to_q():
    rng, n = np.random.default_rng(1), 20000
    tokens = [base(0.6, in_scope=False, rng=rng).base for _ in range(n)]
    counts = np.bincount(tokens, minlength=5)
    assert counts[3:].sum() == 0  # never outside the candidates
    assert chi2(counts[:3], reference(Z, 0.6, 3).q) < CHI2_LIMIT


def test_exploration_token_sampled_proportionally_to_chosen_posterior():
    ref, rng, n = reference(Z, 0.6, 3), np.random.default_rng(2), 20000
    cand = np.array(ref.cand)
    tokens = [led_explore(np.array(Z), cand, temperature=0.6, rng=rng).token for _ in range(n)]
    assert chi2(np.bincount(tokens, minlength=3)[:3], ref.s[ref.j]) < CHI2_LIMIT


def test_gate_explores_with_probability_one_minus_top_q():
    rng, n = np.random.default_rng(3), 20000
    p = 1.0 - reference(Z, 0.6, 3).q[0]
    explored = sum(base(0.6, rng=rng).explore for _ in range(n))
    assert abs(explored - n * p) < 4 * math.sqrt(n * p * (1 - p))


def test_gate_always_explores_with_exploit_off():
    rng = np.random.default_rng(4)
    assert all(base(t, exploit=False, rng=rng).explore for t in (0.6, 0.0) for _ in range(200))


@pytest.mark.parametrize(("t", "draws"), [(0.6, 1), (0.0, 0)])
def test_out_of_scope_never_explores_and_draws_no_gate(t, draws):
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(50):
        assert not base(t, in_scope=False, rng=rng).explore
        twin.random(draws)  # only the base token's draw, and none when greedy
    assert rng.bit_generator.state == twin.bit_generator.state


def test_greedy_gate_is_still_drawn():
    rng, twin = np.random.default_rng(6), np.random.default_rng(6)
    gate = twin.random()
    assert base(0.0, rng=rng).explore == (gate < 1.0 - reference(Z, 0.0, 3).q[0])
    assert rng.bit_generator.state == twin.bit_generator.state


@pytest.mark.parametrize("exploit", [True, False])
def test_draw_order_base_then_gate_then_exploration(exploit):
    ref, cfg = reference(Z, 0.6, 3), LEDConfig(depths=3, candidates=3, exploit=exploit)
    explored = 0
    for seed in range(300):
        u = np.random.default_rng(seed).random(3).tolist()
        token = ref.cand[inverse_cdf(ref.q, u.pop(0))]
        if not exploit or u.pop(0) < 1.0 - ref.q[0]:
            token, explored = ref.cand[inverse_cdf(ref.s[ref.j], u.pop(0))], explored + 1
        out = led_sample(np.array([Z]), config=cfg, rngs=[np.random.default_rng(seed)])
        assert out.tokens.tolist() == [token]
        assert out.depths.tolist() == [ref.j if out.explored[0] else -1]
    assert 0 < explored <= 300


def batch_logits(rows: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 2.0, (rows, 4, 30)).astype(np.float32)


def test_seed_reproducibility():
    z, cfg = batch_logits(6), LEDConfig(depths=4, candidates=5, temperature=0.8)

    def run():
        rngs = [np.random.default_rng(s) for s in range(6)]
        return [led_sample(z, config=cfg, rngs=rngs) for _ in range(20)]

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        assert a.tokens.tolist() == b.tokens.tolist()
        assert a.depths.tolist() == b.depths.tolist()
    assert len({tuple(r.tokens) for r in first}) > 1  # the steps are not all identical


@pytest.mark.parametrize("temperature", [0.8, 0.0])
def test_rows_are_independent_of_their_batch(temperature):
    z = batch_logits(5)
    cfg = LEDConfig(depths=4, candidates=5, temperature=temperature)
    scope = np.array([True, False, True, True, False])
    rngs = [np.random.default_rng(100 + r) for r in range(5)]
    alone = [np.random.default_rng(100 + r) for r in range(5)]
    for _ in range(10):
        batch = led_sample(z, config=cfg, rngs=rngs, in_scope=scope)
        for r in range(5):
            one = led_sample(z[r:r + 1], config=cfg, rngs=[alone[r]], in_scope=scope[r:r + 1])
            assert (batch.tokens[r], batch.depths[r]) == (one.tokens[0], one.depths[0])
    assert not batch.explored[~scope].any()


def test_candidates_ordered_by_probability_ties_by_lower_id():
    z = np.array([1.0, 3.0, 3.0, 0.0, 3.0, 2.0])
    assert top_candidates(z, 3).tolist() == [1, 2, 4]
    assert top_candidates(z, 4).tolist() == [1, 2, 4, 5]
    assert top_candidates(z, 6).tolist() == [1, 2, 4, 5, 0, 3]


def test_candidates_tied_at_kth_place_keep_lower_ids():
    assert top_candidates(np.array([0.0, 0.0, 0.0, 0.0, 1.0]), 3).tolist() == [4, 0, 1]


def test_k_equal_to_vocabulary():
    ref = reference(Z, 0.6, 5)
    step = base(0.6, k=5)
    assert step.candidates.tolist() == ref.cand == [0, 1, 2, 4, 3]
    assert step.q.sum() == pytest.approx(1.0)
    ex = led_explore(np.array(Z), step.candidates, temperature=0.6, rng=np.random.default_rng(0))
    assert np.allclose(ex.posteriors, ref.s, rtol=1e-6) and ex.depth == ref.j
    out = led_sample(np.array([Z]), config=LEDConfig(depths=3, candidates=5),
                     rngs=[np.random.default_rng(0)])
    assert 0 <= out.tokens[0] < 5


def test_config_defaults_are_the_reference_ones():
    cfg = LEDConfig()
    assert (cfg.temperature, cfg.depths, cfg.candidates) == (0.6, 8, 8)
    assert cfg.exploit and not cfg.norm


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", float("inf")),
    ("depths", 1), ("depths", 0), ("candidates", 0), ("candidates", -3),
])
def test_config_rejects_bad_values_naming_the_parameter(field, value):
    with pytest.raises(LedError, match=field) as err:
        LEDConfig(**{field: value})
    assert str(value) in str(err.value)


def test_wrong_shapes_and_arguments_raise():
    cfg, rng = LEDConfig(depths=3, candidates=3), np.random.default_rng(0)
    with pytest.raises(ValueError, match="rows, 3, V"):
        led_sample(np.array(Z), config=cfg, rngs=[rng])
    with pytest.raises(ValueError, match="rows, 3, V"):
        led_sample(np.array([Z[:2]]), config=cfg, rngs=[rng])
    with pytest.raises(ValueError, match="one generator per row"):
        led_sample(np.array([Z, Z]), config=cfg, rngs=[rng])
    with pytest.raises(LedError, match="candidates"):
        led_sample(np.array([Z]), config=LEDConfig(depths=3, candidates=6), rngs=[rng])
    with pytest.raises(TypeError, match="Generator"):
        led_sample(np.array([Z]), config=cfg, rngs=[np.random.RandomState(0)])


def test_in_scope_of_wrong_length_raises():
    cfg = LEDConfig(depths=3, candidates=3)
    with pytest.raises((ValueError, LedError)):
        led_sample(np.array([Z]), config=cfg, rngs=[np.random.default_rng(0)],
                   in_scope=np.array([True, False]))


@pytest.mark.parametrize(("t", "token"), [(0.6, 3), (1.0, 0), (0.0, 2)])
def test_token_logprob_is_final_layer_log_softmax(t, token):
    expected = math.log(softmax(Z[0], t)[token])
    assert token_logprob(np.array(Z[0]), token, temperature=t) == pytest.approx(expected, rel=1e-6)


def test_token_logprob_finite_for_very_unlikely_token():
    z = np.array([0.0, 5.0, -1e4, 1.0], dtype=np.float32)
    value = token_logprob(z, 2, temperature=0.6)
    lse = 5.0 / 0.6 + math.log(sum(math.exp((x - 5.0) / 0.6) for x in (0.0, 5.0, 1.0)))
    assert math.isfinite(value)
    assert value == pytest.approx(-1e4 / 0.6 - lse, rel=1e-6)


def test_token_logprob_rejects_out_of_range_token():
    with pytest.raises((ValueError, IndexError, LedError)):
        token_logprob(np.array(Z[0]), -1, temperature=0.6)


# -- what mutation testing found untested (bench/mutate.py) ---------------------------------

class Fixed(np.random.Generator):
    """A Generator whose every ``random()`` is ``u``: for the boundaries of a draw."""

    def __init__(self, u: float) -> None:
        super().__init__(np.random.PCG64(0))
        self.u = u

    def random(self, *args, **kwargs):
        return self.u


def test_config_is_immutable_and_hashable():
    """Configurations key the engine's per-step groups (one projection per configuration)."""
    from dataclasses import FrozenInstanceError

    cfg = LEDConfig()
    assert hash(cfg) == hash(LEDConfig()) and {cfg: 1}[LEDConfig()] == 1
    with pytest.raises(FrozenInstanceError):
        cfg.depths = 4


@pytest.mark.parametrize("seed", range(6))
def test_candidates_are_a_stable_sort_on_large_rows_with_ties(seed):
    rng = np.random.default_rng(seed)
    z = np.round(rng.normal(0, 2, 3000), 1).astype(np.float32)  # many exact ties
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    for k in (1, 2, 7, 20, 64, 2999, 3000):
        assert top_candidates(z, k).tolist() == order[:k], k


def test_a_draw_takes_the_first_index_whose_cumulative_weight_exceeds_u():
    from led_local.decoding.samplers import draw

    assert draw(np.array([0.0, 1.0]), Fixed(0.0)) == 1  # a zero weight is never drawn
    assert draw(np.array([1.0, 1.0]), Fixed(0.5)) == 1  # u x total on a boundary: the next
    assert draw(np.array([1.0, 1.0]), Fixed(0.4999)) == 0


def test_a_certain_final_layer_never_explores():
    """The gate fires with probability 1 - max(q): never when max(q) = 1, even on a draw of
    exactly 0 (the authors' bernoulli(1 - p))."""
    z = np.array([0.0, -1e4, -1e4, -1e4])
    step = led_base(z, temperature=0.6, k=2, exploit=True, in_scope=True, rng=Fixed(0.0))
    assert step.q.max() == 1.0 and not step.explore


def test_forbidden_candidates_are_left_out_of_both_draws():
    """-inf final logits (a grammar's mask) among the top k: neither the base token nor the
    exploration token may be one of them, although the deeper depths favour them."""
    from led_local.decoding.samplers import allowed

    final = np.array([2.0, -np.inf, 1.0, -np.inf, -5.0])
    assert allowed(final, np.array([0, 2, 1, 3])).tolist() == [0, 2]
    assert allowed(final, np.array([0, 2])).tolist() == [0, 2]
    nothing = np.full(3, -np.inf)
    assert allowed(nothing, np.array([0, 1])).tolist() == [0, 1]  # no choice left: as given
    deeper = np.array([[-9.0, 5.0, -9.0, 5.0, -9.0]] * 2)
    z = np.vstack([final, deeper])
    for seed in range(100):
        b = led_base(final, temperature=1.0, k=4, exploit=False, in_scope=True,
                     rng=np.random.default_rng(seed))
        assert b.candidates.tolist() == [0, 2, 4] and b.base in (0, 2, 4)
        e = led_explore(z, b.candidates, temperature=1.0, rng=np.random.default_rng(seed))
        assert e.token in (0, 2, 4)


def test_exploring_the_final_layer_itself_counts_as_explored_at_depth_0():
    # every deeper depth is certain of candidate 0, so S_0 (the final layer) is the most
    # uncertain: j* = 0, and with exploitation off the step still explores
    z = np.array([[[0.0, 0.0, -9.0], [9.0, -9.0, -9.0], [9.0, -9.0, -9.0]]])
    out = led_sample(z, config=LEDConfig(depths=3, candidates=2, exploit=False),
                     rngs=[np.random.default_rng(0)])
    assert out.explored.tolist() == [True] and out.depths.tolist() == [0]


def _top_by_full_selection(z: np.ndarray, k: int) -> list[int]:
    """The definition: sort by value (descending), ties by lower id, keep k."""
    return sorted(range(len(z)), key=lambda i: (-z[i], i))[:k]


@pytest.mark.parametrize("kind", ["normal", "ties", "masked", "one-left", "sorted", "flat"])
def test_top_candidates_on_large_rows_is_the_full_selection(kind):
    """Rows past 64 k values go through the strided-sample threshold: same ids as sorting
    the whole row, ties to the lower id included, -inf (a grammar's mask) included."""
    rng = np.random.default_rng(len(kind))
    for trial in range(40):
        v = int(rng.integers(600, 5000))
        z = rng.normal(size=v).astype(np.float32) * 4
        if kind == "ties":
            z = rng.integers(-2, 3, size=v).astype(np.float32)
        elif kind == "masked":
            z[rng.random(v) < 0.98] = -np.inf
        elif kind == "one-left":
            z[:] = -np.inf
            z[rng.integers(0, v)] = 2.0
        elif kind == "sorted":
            z = np.sort(z)
        elif kind == "flat":
            z[:] = 1.5
        k = int(rng.integers(1, 9))
        assert top_candidates(z, k).tolist() == _top_by_full_selection(z, k), (trial, v, k)


def test_kth_largest_is_a_full_partitions_value():
    """The strided-sample shortcut gives np.partition's k-th largest on rows with ties,
    -inf entries, a sorted or constant row, and every k from 1 to the row's length."""
    from led_local.decoding.samplers import kth_largest

    rng = np.random.default_rng(5)
    rows = [rng.standard_normal(50_000).astype(np.float32),
            np.round(rng.standard_normal(50_000), 1),  # many ties
            np.sort(rng.standard_normal(20_000)),  # ascending: the sample sees the order
            np.full(10_000, 1.5),
            np.where(rng.random(30_000) < 0.99, -np.inf, rng.standard_normal(30_000))]
    for z in rows:
        n = z.shape[-1]
        for k in (1, 2, 20, 40, 100, 777, n // 64, n // 64 + 1, n - 1, n):
            want = np.partition(z, n - k)[n - k]
            assert kth_largest(z, k) == want, (n, k)
    small = np.array([3.0, 1.0, 2.0])
    assert [kth_largest(small, k) for k in (1, 2, 3)] == [3.0, 2.0, 1.0]


def test_draw_stays_inside_the_row_when_u_reaches_the_total():
    """u = r * total with r at its top (rounding can bring u to the total itself): the last
    index, never one past the row."""
    from led_local.decoding.samplers import draw

    class Top:
        def random(self) -> float:
            return 1.0

    assert draw(np.array([0.2, 0.3, 0.5]), Top()) == 2
    assert draw(np.array([0.5, 0.5, 0.0]), Top()) == 2
