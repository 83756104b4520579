"""inspect's analysis on hand-computed logits, scope flags, the summary and its verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from led_local.decoding.chatformat import ScopeEnd
from led_local.decoding.samplers import LEDConfig
from led_local.diagnostics.inspect import analyse_position, entropy, scope_flags
from led_local.diagnostics.report import format_summary, summarise

# one position, V = 4, k = 2, d = 3; logits are log-probabilities, so at T = 1 P_j is exact
P0 = [0.6, 0.3, 0.05, 0.05]
LN0 = [[0.25, 0.25, 0.25, 0.25], [0.1, 0.7, 0.1, 0.1]]
LN1 = [[0.35, 0.55, 0.05, 0.05], [0.9, 0.02, 0.04, 0.04]]


def _h(p) -> float:
    return -sum(x * math.log(x) for x in p)


def _step(temperature=1.0, exploit=True, in_scope=True, layers=None):
    led = LEDConfig(temperature=temperature, depths=3, candidates=2, exploit=exploit)
    return analyse_position(np.log(P0), {"ln0": np.log(LN0), "ln1": np.log(LN1)}, token=1,
                            led=led, in_scope=in_scope, layers=layers)


def test_crafted_stack_gives_the_hand_computed_values():
    s = _step()
    assert s["token"] == 1 and s["in_scope"] is True
    assert s["entropy_final"] == pytest.approx(_h(P0), abs=1e-6)
    assert s["gate"] == pytest.approx(0.4, abs=1e-7)  # 1 - max(q) = 1 - 0.6
    # +0.1 temperature: q ~ (0.6, 0.3)^(1/1.1), against (2/3, 1/3)
    r = 2 ** (1 / 1.1)
    assert s["tv_temperature"] == pytest.approx(2 / 3 - r / (1 + r), abs=1e-7)
    # ln0: A_1 = (0.25, 0.25), A_2 = (0.1, 0.7); S_0 = (2/3, 1/3), S_1 = (0.85, 0.55) / 1.4,
    # S_2 = (0.95, 1.25) / 2.2 has the largest entropy: j* = 2
    ln0 = s["ln0"]
    assert ln0["depth_entropy"] == pytest.approx([math.log(4), _h(LN0[1])], abs=1e-6)
    assert ln0["candidate_mass"] == pytest.approx([0.5, 0.8], abs=1e-6)
    posts = [(2 / 3, 1 / 3), (0.85 / 1.4, 0.55 / 1.4), (0.95 / 2.2, 1.25 / 2.2)]
    assert ln0["posterior_entropy"] == pytest.approx([_h(p) for p in posts], abs=1e-6)
    assert ln0["j_star"] == 2
    tv = 0.95 / 2.2 - 2 / 3  # |S_2 - q / sum q| summed and halved, the two terms equal
    assert ln0["tv_explore"] == pytest.approx(abs(tv), abs=1e-6)
    assert ln0["tv_emit"] == pytest.approx(0.4 * abs(tv), abs=1e-6)
    # ln1: S_1 = (0.95, 0.85) / 1.8 is nearly uniform, S_2 = (1.85, 0.87) / 2.72 is not: j* = 1
    ln1 = s["ln1"]
    assert ln1["candidate_mass"] == pytest.approx([0.9, 0.92], abs=1e-6)
    assert ln1["j_star"] == 1
    assert ln1["posterior_entropy"][1] == pytest.approx(_h((0.95 / 1.8, 0.85 / 1.8)), abs=1e-6)
    assert ln1["tv_explore"] == pytest.approx(2 / 3 - 0.95 / 1.8, abs=1e-6)
    assert ln1["tv_emit"] == pytest.approx(0.4 * (2 / 3 - 0.95 / 1.8), abs=1e-6)
    assert set(s) == {"token", "entropy_final", "gate", "in_scope", "tv_temperature", "ln0",
                      "ln1"}
    assert set(ln0) == {"depth_entropy", "candidate_mass", "posterior_entropy", "j_star",
                        "tv_explore", "tv_emit"}


def test_out_of_scope_emits_plain_sampling_and_no_exploit_always_explores():
    out = _step(in_scope=False)
    assert out["in_scope"] is False and out["ln0"]["tv_emit"] == 0.0
    assert out["ln0"]["tv_explore"] > 0  # what LED would do, reported all the same
    always = _step(exploit=False)
    assert always["gate"] == 1.0
    assert always["ln0"]["tv_emit"] == pytest.approx(always["ln0"]["tv_explore"])


def test_greedy_compares_the_argmaxes():
    s = _step(temperature=0.0)  # T = 0: P_j = softmax(Z_j), no division; draws are argmaxes
    assert s["gate"] == pytest.approx(0.4, abs=1e-7)
    assert s["ln0"]["j_star"] == 2 and s["ln0"]["tv_explore"] == 1.0  # argmax S_2 = token 1
    assert s["ln1"]["j_star"] == 1 and s["ln1"]["tv_explore"] == 0.0  # argmax S_1 = token 0
    # the argmax against q at T = 0.1, (0.6, 0.3)^10 normalised
    assert s["tv_temperature"] == pytest.approx(2 ** -10 / (1 + 2 ** -10), abs=1e-7)


def test_temperature_divides_the_logits_and_layers_are_entropies():
    z = np.log(np.array([[0.6, 0.3, 0.05, 0.05]]))
    p = np.array([0.6, 0.3, 0.05, 0.05]) ** 2
    p /= p.sum()
    assert entropy(z, 0.5)[0] == pytest.approx(_h(p), abs=1e-6)
    layers = {"ln0": np.log(LN0), "ln1": np.log(LN1)}
    s = _step(layers=layers)
    assert s["layers"]["ln0"] == pytest.approx([math.log(4), _h(LN0[1])], abs=1e-6)
    assert s["layers"]["ln1"] == pytest.approx([_h(LN1[0]), _h(LN1[1])], abs=1e-6)


def test_scope_ends_after_the_token_that_completes_the_marker():
    pieces = ["a", "</th", "ink>", "b", "c"]
    text_level = ScopeEnd("</think>")
    assert scope_flags(list(range(5)), pieces, text_level) == [True] * 3 + [False] * 2
    assert scope_flags([0, 1, 2], ["a", "</think>", "b"], None) == [True] * 3
    # a one-token marker: that token ends the scope, its text spelled out does not
    token_level = ScopeEnd("</think>", token=7)
    flags = scope_flags([5, 7, 6, 6], ["a", "</think>", "b", "c"], token_level)
    assert flags == [True] * 2 + [False] * 2
    assert scope_flags([5, 8, 6], ["a", "</think>", "b"], token_level) == [True] * 3


def test_summary_means_in_scope_positions_and_says_it_plainly():
    steps = [_step(), _step(in_scope=False)]
    summary = summarise([{"steps": steps}])
    assert summary["positions"] == 2 and summary["in_scope"] == 1
    assert summary["ln0"]["tv_emit"] == pytest.approx(steps[0]["ln0"]["tv_emit"])
    # ln4 = 1.39 nats at depth 1 (ln0), 1.05 (ln1), above the final layer's 0.90
    assert summary["ln0"]["above_final"] == 1.0 and summary["ln1"]["above_final"] == 1.0
    assert summary["ln0"]["j_star"] == [0, 0, 1]
    # tv_emit 0.094 against 0.014 for +0.1 temperature: LED clearly changes the choices
    assert summary["verdict"].startswith("LED clearly changes")
    assert "as LED assumes" in summary["verdict"]
    text = format_summary(summary, model="m.gguf", depths=3)
    assert "1 inside LED's scope" in text and summary["verdict"] in text
    none = summarise([{"steps": [_step(in_scope=False)]}])
    assert none["in_scope"] == 0 and "No position" in none["verdict"]


def test_plot_draws_skewed_entropies(tmp_path):
    from led_local.diagnostics.plot import plot_inspection

    steps = [_step(layers={"ln0": np.log(LN0), "ln1": np.log(LN1)}) for _ in range(5)]
    steps[-1] = {**steps[-1], "entropy_final": 10.0}  # the mean lies above the upper quartile
    png = tmp_path / "p.png"
    plot_inspection([{"steps": steps[:2]}, {"steps": steps[2:]}], png, n_layer=2, depths=3,
                    title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"
