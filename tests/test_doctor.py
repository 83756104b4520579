"""``led-local doctor``: passes on this build and the bundled models, fails with one clear line
per broken check on crafted cases (a head llama.cpp does not apply, an architecture without
the layer-input export, a build with AMX active)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import pytest
from click.testing import CliRunner
from tinymodel import write_tiny_llama

from led_local.cli import main
from led_local.diagnostics import build
from led_local.llama import gguf_info, native

ROOT = Path(__file__).resolve().parent.parent
BUILD_CHECKS = ["versions", "backend", "cpu-features", "patch", "attention", "amx",
                "extra-buffer-types"]
MODEL_CHECKS = ["model", "led-depths", "head", "chat", "capture", "decode", "projection"]


def run(*args):
    return CliRunner().invoke(main, ["doctor", *map(str, args)])


def failed_lines(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("doctor: ")]


def test_doctor_without_a_model_passes_and_prints_a_checklist():
    r = run()
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert [ln.split()[1] for ln in lines[:-1]] == BUILD_CHECKS
    assert all(ln.startswith("ok ") for ln in lines[:-1])
    assert lines[-1] == f"all {len(BUILD_CHECKS)} checks passed" and r.stderr == ""


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_doctor_model_json_passes_on_the_bundled_models(model, request):
    r = run(request.getfixturevalue(model), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["ok"] is True
    checks = {c["name"]: c for c in out["checks"]}
    assert list(checks) == BUILD_CHECKS + MODEL_CHECKS
    assert all(c["ok"] and c["detail"] for c in checks.values())
    assert checks["backend"]["value"][0]["type"] == "CPU"
    assert checks["backend"]["value"][0]["memory_total"] > 0
    paths = ["callback"] + (["layer-inp"] if native.layer_inp_patch_version() else [])
    assert list(checks["decode"]["value"]) == paths  # every path the build offers, agreeing
    proj = checks["projection"]["value"]
    assert proj["top1_mismatches"] == 0 and proj["max_abs_diff"] <= 1e-3
    arch = {"smollm2": "llama", "gemma3": "gemma3"}[model]
    assert checks["model"]["value"]["architecture"] == arch


def _tiny_with(tmp_path, monkeypatch, name: str, *, keys: dict | None = None, **kw) -> Path:
    """A 10-block tiny model (LED's default d=8 fits) with extra float metadata ``keys``."""
    write_header = gguf.GGUFWriter.write_header_to_file

    def with_keys(self, *args, **kwargs):
        for key, value in (keys or {}).items():
            self.add_float32(key, value)
        return write_header(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_header_to_file", with_keys)
    path = write_tiny_llama(tmp_path / name, n_layer=10, seed=5, **kw).path
    monkeypatch.undo()
    return path


@pytest.mark.parametrize("scale, reason", [
    (0.5, "max abs difference"),  # same ranking, wrong values
])
def test_a_head_llama_cpp_does_not_apply_fails_the_projection_check(tmp_path, monkeypatch,
                                                                    scale, reason):
    # llama.cpp's llama graph ignores llama.logit_scale, and so does led-local; a led-local
    # that wrongly applied it (as command-r's graph does) must fail the projection check
    path = _tiny_with(tmp_path, monkeypatch, "scaled.gguf", keys={"llama.logit_scale": scale})
    assert run(path, "--json").exit_code == 0
    monkeypatch.setattr(gguf_info, "LOGIT_SCALE_MULTIPLIES",
                        gguf_info.LOGIT_SCALE_MULTIPLIES | {"llama"})
    r = run(path, "--json")
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    assert out["ok"] is False
    assert [c["name"] for c in out["checks"] if not c["ok"]] == ["projection"]
    (line,) = failed_lines(r)
    assert line.startswith("doctor: projection: led-local's head projection does not "
                           "reproduce llama.cpp's logits") and reason in line


def test_layer_inp_on_an_architecture_without_it_fails_only_when_asked_for(tmp_path,
                                                                            monkeypatch):
    # mistral3's graph names its block outputs (the callback works) but registers no inputs
    path = _tiny_with(tmp_path, monkeypatch, "m3.gguf", arch="mistral3")
    r = run(path)
    assert r.exit_code == 0, r.output
    assert re.search(r"^ok +capture +auto picks eval-callback .*layer-inp unavailable: "
                     r"architecture 'mistral3'", r.stdout, re.M)
    assert re.search(r"^ok +decode .* agree through callback: ", r.stdout, re.M)
    r = run(path, "--capture", "layer-inp")
    assert r.exit_code == 1
    assert re.search(r"^FAIL +capture +--capture layer-inp is unavailable", r.stdout, re.M)
    assert [ln.split(":")[1].strip() for ln in failed_lines(r)] == (
        ["capture"] if native.layer_inp_patch_version() else ["patch", "capture"])
    assert r.stdout.splitlines()[-1] == f"{len(BUILD_CHECKS + MODEL_CHECKS)} checks, " \
        f"{len(failed_lines(r))} failed"


def test_a_model_too_shallow_for_the_default_depths_fails_that_check(tmp_path):
    path = write_tiny_llama(tmp_path / "shallow.gguf", n_layer=4, seed=1).path
    r = run(path, "--json")
    assert r.exit_code == 1
    failed = {c["name"]: c["detail"] for c in json.loads(r.stdout)["checks"] if not c["ok"]}
    assert list(failed) == ["led-depths"]
    assert "--led-depths must be between 2 and 3" in failed["led-depths"]


def test_an_unreadable_model_is_a_user_error(tmp_path):
    r = run(tmp_path / "nope.gguf")
    assert r.exit_code == 2 and "model file not found" in r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1


def test_active_amx_fails_with_the_reason():
    bad = build.amx_check(True, ["AMX", "CPU_REPACK"], True)
    assert not bad.ok and "AMX buffer type is active" in bad.detail and "#20824" in bad.detail
    assert build.amx_check(True, ["CPU_REPACK"], False).ok  # compiled in, no AMX CPU
    assert build.amx_check(False, ["CPU_REPACK"], True).ok  # the default build on AMX
    this = build.amx_check(native.cpu_features().get("amx_int8", False),
                            native.cpu_extra_buffer_types(), build.host_has_amx())
    assert this.ok and "AMX" not in native.cpu_extra_buffer_types()


def test_patch_and_version_verdicts():
    expected = native.LAYER_INP_PATCH_VERSION
    assert build.patch_check(expected, expected).ok
    assert not build.patch_check(expected + 1, expected).ok
    assert build.patch_check(None, expected).ok  # a stock build works through the callback
    stock = build.patch_check(None, expected, capture="layer-inp")
    assert not stock.ok and "make install" in stock.detail
    old = build.versions_check("0.3.1", "0.3.36", "0.5.0", "0.25.3")
    assert not old.ok and "requires 0.3.36" in old.detail
    assert build.versions_check("0.3.36", "0.3.36", None, None).ok


def test_the_expected_patch_version_is_the_one_the_patch_exports():
    patch = (ROOT / "patches" / "0001-layer-inp-export.patch").read_text()
    exported = re.search(r"llama_led_layer_inp_patch_version\(void\) \{\n\+\s+return (\d+);",
                         patch)
    assert exported and int(exported.group(1)) == native.LAYER_INP_PATCH_VERSION


def test_attention_verdicts():
    flash = build.attention_check(1, False)
    assert flash.ok and flash.value == "flash" and "patch 0003" in flash.detail
    assert build.attention_check(1, True).value == "plain"  # GPU kernels are not covered
    stock = build.attention_check(None, False)
    assert stock.ok and stock.value == "plain" and "make install" in stock.detail
