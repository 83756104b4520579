"""The CLI end to end through CliRunner: generate, chat, info, and one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from led_local.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def test_generate_json_has_every_field(smollm2):
    r = run("generate", smollm2, "-p", "What is 2 + 2?", "-n", "12", "-s", "1", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("text", "tokens", "n_tokens", "finish_reason", "method", "params", "led",
                "timing", "seed"):
        assert key in out
    assert out["method"] == "led" and out["seed"] == 1
    assert out["n_tokens"] == len(out["tokens"]) == len(out["led"]["depths"])
    assert out["finish_reason"] in ("stop", "length")
    assert out["led"]["explored"] == sum(d is not None for d in out["led"]["depths"])
    assert set(out["timing"]) >= {"prompt_s", "decode_s", "tokens_per_s"}
    assert out["params"]["temperature"] == 0.6 and out["params"]["led_depths"] == 8


def test_generate_is_reproducible_with_a_seed(smollm2):
    args = ("generate", smollm2, "-p", "Name a color.", "-n", "16", "-s", "9", "--json")
    a, b = json.loads(run(*args).stdout), json.loads(run(*args).stdout)
    assert a["tokens"] == b["tokens"] and a["led"] == b["led"]


def test_generate_raw_uses_the_prompt_verbatim(smollm2):
    r = run("generate", smollm2, "--raw", "-p", "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n", "-m", "greedy", "-n", "8", "--json")
    assert r.exit_code == 0, r.output
    chat = run("generate", smollm2, "-p", "Hi", "-m", "greedy", "-n", "8", "--json")
    # the chat template adds a system message, so raw and templated prompts differ
    n_raw = json.loads(r.stdout)["timing"]["n_prompt"]
    assert n_raw < json.loads(chat.stdout)["timing"]["n_prompt"]


def test_generate_plain_prints_text_on_stdout_and_stats_on_stderr(smollm2):
    r = run("generate", smollm2, "-p", "Say hi.", "-n", "8", "-s", "2")
    assert r.exit_code == 0
    assert "tokens/s" in r.stderr and "tokens/s" not in r.stdout


def test_info_reports_the_model(smollm2, gemma3):
    out = json.loads(run("info", smollm2, "--json").stdout)
    assert out["architecture"] == "llama" and out["blocks"] == 30 and out["width"] == 576
    assert out["vocabulary"] == 49152 and out["tied"] is True and out["chat_template"] is True
    assert out["lm_head"] == "token_embd.weight" and out["lm_head_type"] == "Q8_0"
    g = json.loads(run("info", gemma3, "--json").stdout)
    assert g["architecture"] == "gemma3" and g["chat_template"] is False
    assert "capture" in g


def test_chat_streams_keeps_history_and_resets(smollm2):
    script = "What is 3 + 4?\nAnd times 2?\n/reset\nHello\n/exit\n"
    r = run("chat", smollm2, "-m", "greedy", "-n", "24", input=script)
    assert r.exit_code == 0, r.output
    assert "(conversation reset)" in r.stderr
    assert r.stdout.count("\n") >= 3  # three replies, each ending its line


def test_chat_reports_a_full_context_and_keeps_going(smollm2):
    long = "word " * 300
    r = run("chat", smollm2, "--ctx", "256", "-m", "greedy", "-n", "8",
            input=f"{long}\nHi\n/exit\n")
    assert r.exit_code == 0, r.output
    assert "no longer fits the context" in r.stderr
    assert r.stdout.strip()  # the short message after it still got a reply


def test_chat_without_template_is_refused(gemma3):
    r = run("chat", gemma3, input="/exit\n")
    assert r.exit_code == 2 and "no chat template" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--led-depths", "30"], "--led-depths must be between 2 and 29"),
    (["--led-depths", "1"], "--led-depths must be >= 2"),
    (["--led-candidates", "0"], "--led-candidates must be >= 1"),
    (["--led-candidates", "60000"], "--led-candidates must be <= the vocabulary"),
    (["--temperature", "-1"], "must be >= 0"),
    (["--top-p", "0.9"], "--top-p applies to --method sample/dola"),
    (["-m", "sample", "--no-exploit"], "--no-exploit applies to --method led"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--ctx", "64"], "more than the context allows"),
])
def test_bad_options_give_one_line_and_exit_2(smollm2, args, message):
    prompt = "word " * 300 if "--ctx" in args else "Hi"  # llama.cpp pads contexts to 256
    r = run("generate", smollm2, "-p", prompt, *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = (ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes()
    (tmp / "empty.gguf").write_bytes(b"")
    (tmp / "text.gguf").write_text("hello, not a model\n")
    (tmp / "short.gguf").write_bytes(good[:4096])
    (tmp / "cut.gguf").write_bytes(good[: len(good) // 2])
    return {
        "missing": (tmp / "nope.gguf", "model file not found"),
        "empty": (tmp / "empty.gguf", "model file is empty"),
        "not gguf": (tmp / "text.gguf", "not a GGUF file"),
        "header cut": (tmp / "short.gguf", "corrupt or truncated GGUF"),
        "data cut": (tmp / "cut.gguf", "truncated GGUF file"),
        "directory": (tmp, "is a directory"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "not gguf", "header cut", "data cut",
                                  "directory"])
def test_bad_model_files_give_one_line_and_exit_2(tmp_path, smollm2, case):
    path, message = _bad_files(tmp_path)[case]
    for cmd in (["generate", path, "-p", "hi"], ["info", path]):
        r = run(*cmd)
        assert r.exit_code == 2, r.output
        assert message in r.stderr and "Traceback" not in r.output


def test_unsupported_architecture_is_refused(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "mamba9")
    w.add_block_count(2)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", __import__("numpy").zeros((4, 8), "float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run("generate", tmp_path / "odd.gguf", "-p", "hi")
    assert r.exit_code == 2 and "architecture 'mamba9' is not supported" in r.stderr


def test_readme_makefile_usage_and_help_agree():
    readme = (ROOT / "README.md").read_text()
    usage = (ROOT / "docs" / "usage.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "test-fast", "install", "models", "bench", "lint", "clean"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    for command in ("generate", "chat", "info", "doctor", "solve", "passk", "compare",
                    "serve", "inspect", "merge", "hapo-calibrate"):
        help_text = run(command, "--help").stdout
        for flag in re.findall(r"--[a-z][a-z-]+", _usage_line(usage, command)):
            assert flag in help_text, (command, flag)
    options = run("generate", "--help").stdout
    for flag in re.findall(r"^\| `(--?[a-z-]+)", usage, re.M):
        assert flag.split(",")[0] in options, flag


def _usage_line(usage: str, command: str) -> str:
    lines = usage.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"led-local {command} "):
            block = [line]
            for nxt in lines[i + 1:]:
                if not nxt.startswith(" "):
                    break
                block.append(nxt)
            return " ".join(block)
    raise AssertionError(f"no usage line for {command} in docs/usage.md")


def test_chat_shows_thinking_dim_when_the_template_opens_it(tmp_path, monkeypatch):
    import tinymodel

    monkeypatch.setattr(tinymodel, "CHATML_TEMPLATE",
                        tinymodel.CHATML_TEMPLATE.replace("assistant\\n", "assistant\\n<think>\\n"))
    model = tinymodel.write_tiny_llama(tmp_path / "think.gguf", seed=1)
    r = CliRunner().invoke(main, ["chat", str(model.path), "-m", "greedy", "-n", "6"],
                           input="hello\n/exit\n", color=True)
    assert r.exit_code == 0, r.output
    assert "\x1b[2m" in r.stdout  # dim: inside the thinking block the template opened
    monkeypatch.undo()
    plain = tinymodel.write_tiny_llama(tmp_path / "plain.gguf", seed=1)
    r = CliRunner().invoke(main, ["chat", str(plain.path), "-m", "greedy", "-n", "6"],
                           input="hello\n/exit\n", color=True)
    assert r.exit_code == 0 and "\x1b[2m" not in r.stdout
