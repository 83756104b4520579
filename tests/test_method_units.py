"""Decoding methods as units: the registry is the only place that knows the methods; the
command line, the server, the engine and the records are made from it."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from led_local.cli import main
from led_local.decoding import registry
from led_local.decoding.engine import Sequence
from led_local.decoding.methods import DecodeConfig, build_config
from led_local.errors import ConfigError, LedError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "led_local"
UNITS = {name: PACKAGE / "decoding" / f"{name}.py" for name in registry.METHODS}
TOY = "import toy_method; from led_local.cli import main; main()"


def _method_names_compared(tree: ast.AST) -> list[str]:
    """Method names that a module compares against or passes as a literal ``method=``."""
    names = set(registry.METHODS)
    found = []

    def literals(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and node.value in names:
            return [node.value]
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return [x for e in node.elts for x in literals(e)]
        return []

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            # ==/!= against a name, or membership in a literal collection of names ("sample"
            # in a record is its field, not the method)
            if all(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                for side in [node.left, *node.comparators]:
                    found += literals(side)
            for op, right in zip(node.ops, node.comparators):
                if isinstance(op, ast.In | ast.NotIn) and not isinstance(right, ast.Constant):
                    found += literals(right)
        elif isinstance(node, ast.keyword) and node.arg == "method":
            found += literals(node.value)
    return found


def test_no_module_but_a_methods_own_compares_its_name():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path in UNITS.values() or path.name == "registry.py":
            continue
        for name in _method_names_compared(ast.parse(path.read_text(encoding="utf-8"))):
            offenders.append(f"{path.relative_to(ROOT)}: {name!r}")
    assert offenders == []


def test_the_engine_cli_and_server_hold_no_method_name_at_all():
    for part in ("decoding/engine.py", "cli", "serve"):
        for path in sorted((PACKAGE / part).rglob("*.py")) if (PACKAGE / part).is_dir() \
                else [PACKAGE / part]:
            text = path.read_text(encoding="utf-8")
            for name in ("dola", "hapo", "swir", "greedy"):
                assert f'"{name}"' not in text and f"'{name}'" not in text, (path, name)


def test_library_errors_name_options_not_flags():
    """Error texts below the command line name options in backquotes, never as --flags."""
    flag = re.compile(r"(^|[\s(])--[a-z]")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for sub in ast.walk(node.exc):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str) \
                            and flag.search(sub.value):
                        offenders.append(f"{path.relative_to(ROOT)}:{sub.lineno}")
    assert offenders == []


def test_config_errors_render_as_flags_or_fields():
    with pytest.raises(ConfigError) as e:
        build_config("led", {"led_depths": 1})
    assert str(e.value) == "led_depths must be >= 2, got 1" and e.value.option == "led_depths"
    with pytest.raises(ConfigError) as e:
        build_config("led", {"top_k": 3})
    assert e.value.render(lambda n: n.upper()) == \
        "TOP_K applies to METHOD sample/dola/hapo/swir, not led"


def test_every_option_has_one_declaration_and_a_reader():
    names = [o.name for o in registry.options()]
    assert len(names) == len(set(names))
    assert all(registry.users(n) for n in names)


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_build_config_defaults_match_the_dataclass(method):
    """A method built with no option given is the DecodeConfig the library makes by hand
    (hapo takes its own T0 and filters and needs statistics)."""
    if method == "hapo":
        cfg = build_config(method, {"hapo_rolling": 2})
        assert (cfg.temperature, cfg.top_k, cfg.top_p) == (1.0, 0, 1.0)
        return
    cfg = build_config(method, {})
    if method == "dola":  # no filters but the contrast's own
        assert (cfg.top_k, cfg.top_p) == (0, 1.0)
        assert cfg.params() == DecodeConfig(method=method, top_k=0, top_p=1.0).params()
        return
    assert cfg.params() == DecodeConfig(method=method).params()


def test_a_request_starts_from_the_servers_configuration():
    base = build_config("led", {"led_depths": 4, "temperature": 0.9})
    cfg = build_config("led", {"led_candidates": 3}, base=base)
    assert (cfg.led.depths, cfg.led.candidates, cfg.temperature) == (4, 3, 0.9)
    # another method keeps the server's settings it does not change (its own defaults are
    # the command line's, not a request's)
    dola = build_config("dola", {"top_k": 4}, base=base)
    assert (dola.temperature, dola.top_k, dola.dola_layers, dola.led.depths) == \
        (0.9, 4, "low", 4)
    with pytest.raises(LedError, match="^dola_layers must be low or high, got 'mid'$"):
        build_config("dola", {"dola_layers": "mid"}, base=base)


# -- a new method: one module (tests/toy_method.py) and one registry line ---------------------
def _toy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", TOY, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def test_a_toy_method_works_in_generate_and_solve(smollm2, tmp_path):
    outs = {}
    for depth in (1, 3):
        r = _toy("generate", smollm2, "-p", "What is 2+3?", "-n", "8", "-s", "0", "--json",
                 "-m", "lens", "--lens-depth", str(depth))
        assert r.returncode == 0, r.stderr
        outs[depth] = json.loads(r.stdout)
        assert outs[depth]["method"] == "lens"
        assert outs[depth]["params"] == {"temperature": 0.0, "lens_depth": depth}
    greedy = CliRunner().invoke(main, ["generate", str(smollm2), "-p", "What is 2+3?", "-n", "8",
                                       "-m", "greedy", "--json"])
    # a shallower depth's top-1 is not the final layer's (a wrong column would give it)
    assert outs[1]["tokens"] != json.loads(greedy.stdout)["tokens"] != outs[3]["tokens"]
    r = _toy("generate", smollm2, "-p", "hi", "-m", "lens", "--lens-depth", "0")
    assert r.returncode == 2 and r.stderr.strip() == "Error: --lens-depth must be >= 1, got 0"
    r = _toy("generate", smollm2, "-p", "hi", "-m", "led", "--lens-depth", "2")
    assert r.returncode == 2 and "--lens-depth applies to --method lens, not led" in r.stderr
    out = tmp_path / "run.jsonl"
    r = _toy("solve", smollm2, "gsm8k", "-o", out, "-m", "lens", "-n", "2", "--limit", "2",
             "--max-tokens", "8", "--parallel", "4")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 4 and {r["method"] for r in recs} == {"lens"}
    assert all(r["params"]["lens_depth"] == 1 for r in recs)
    # greedy: both samples of a problem are the same
    assert recs[0]["text"] == recs[1]["text"] or recs[0]["problem_id"] != recs[1]["problem_id"]


# -- the server: every registered method over HTTP, the options it was started with -----------
def _post(server, body: dict) -> tuple[int, dict]:
    from test_serve import KEY

    code, raw = server.request("POST", "/v1/chat/completions", json.dumps(body).encode(),
                               {"Authorization": f"Bearer {KEY}",
                                "Content-Type": "application/json"})
    return code, json.loads(raw)


def _ask(**fields) -> dict:
    return {"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 6,
            "seed": 1, **fields}


def test_http_takes_every_method_the_server_can_run(smollm2, tmp_path):
    from test_serve import KEY, Server

    stats = tmp_path / "stats.json"
    r = CliRunner().invoke(main, ["hapo-calibrate", str(smollm2), "gsm8k", "-o", str(stats),
                                  "--limit", "2", "--max-tokens", "16"])
    assert r.exit_code == 0, r.output
    server = Server(smollm2, "--api-key", KEY, "-m", "hapo", "--hapo-stats", str(stats))
    try:
        code, out = _post(server, _ask(method="hapo", hapo_tau=0.1))
        assert code == 200, out
        for method in ("sample", "greedy"):
            assert _post(server, _ask(method=method))[0] == 200
        code, out = _post(server, _ask(method="swir"))  # no embeddings loaded: refused
        assert code == 400 and "needs the input embeddings" in out["error"]["message"]
        code, out = _post(server, _ask(method="led", led_depths=1))
        assert code == 400 and out["error"]["message"] == "led_depths must be >= 2, got 1" \
            or out["error"]["param"] == "led_depths"
        code, out = _post(server, _ask(method="led", hapo_tau=0.1))
        assert code == 400 and out["error"]["param"] == "hapo_tau"
        assert "--" not in out["error"]["message"]
        assert "method hapo applies" not in out["error"]["message"]
    finally:
        server.stop()
    server = Server(smollm2, "--api-key", KEY, "-m", "swir", "--swir-window", "8",
                    "--think-end", "")
    try:
        code, out = _post(server, _ask(method="swir", swir_window=4))
        assert code == 200, out
        code, out = _post(server, _ask(method="swir", swir_top_mass=0.5))
        assert code == 400 and out["error"]["param"] == "swir_top_mass"
        assert out["error"]["message"].startswith("swir_top_mass 0.5 differs")
    finally:
        server.stop()


def test_serve_honours_chat_template_and_projection(smollm2, tmp_path):
    from test_serve import KEY, Server

    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}ANSWER:")
    r = CliRunner().invoke(main, ["serve", str(smollm2), "-m", "sample", "--projection", "host"])
    assert r.exit_code == 2 and "--projection applies to --method led/dola" in r.stderr
    plain = Server(smollm2, "--api-key", KEY)
    try:
        n_plain = _post(plain, _ask(method="greedy"))[1]["usage"]["prompt_tokens"]
    finally:
        plain.stop()
    server = Server(smollm2, "--api-key", KEY, "--chat-template", str(template),
                    "--projection", "host")
    try:
        code, out = _post(server, _ask(method="greedy"))
        assert code == 200, out
        n_custom = out["usage"]["prompt_tokens"]
        vocab = CliRunner().invoke(main, ["generate", str(smollm2), "--raw", "-n", "1", "-m",
                                          "greedy", "--json", "-p", "<<Name a color.>>ANSWER:"])
        assert n_custom == json.loads(vocab.stdout)["timing"]["n_prompt"] != n_plain
    finally:
        server.stop()


def test_a_toy_method_works_over_http(smollm2):
    from test_serve import KEY, Server

    server = Server(smollm2, "--api-key", KEY, "-m", "lens", code=TOY)
    try:
        code, out = _post(server, _ask(method="lens", lens_depth=1))
        assert code == 200, out
        code, out = _post(server, _ask(method="lens", lens_depth=0))
        assert code == 400 and out["error"]["param"] == "lens_depth"
        code, out = _post(server, _ask(method="led", lens_depth=2))
        assert code == 400 and out["error"]["message"] == \
            "lens_depth applies to method lens, not led"
    finally:
        server.stop()


def test_the_docs_options_table_is_the_registrys():
    text = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    start = text.index("-->\n", text.index("<!-- options table")) + 4
    end = text.index("<!-- end of the options table -->")
    assert text[start:end] == registry.options_table()


def test_led_explore_chance_is_its_gate_and_only_led_has_one():
    logits = np.log(np.array([0.7, 0.2, 0.1], np.float32))
    seq = Sequence(slot=0, max_tokens=4)
    led = build_config("led", {"temperature": 1.0})
    assert led.unit.explore_chance(seq, led, logits) == pytest.approx(0.3, abs=1e-6)
    off = build_config("led", {"exploit": False})
    assert off.unit.explore_chance(seq, off, logits) == 1.0
    seq.in_scope = False  # after the end-of-thinking marker LED never explores
    assert led.unit.explore_chance(seq, led, logits) == 0.0
    sample = build_config("sample", {})
    assert sample.unit.explore_chance(seq, sample, logits) is None
