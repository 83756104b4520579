"""Hostile model files and inputs never hang or crash led-local, and small statistics stay
honest (issue 8, cases 8, 10-12, 14, 15)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from tinymodel import write_tiny_llama

from led_local.cli import main
from led_local.errors import LedError
from led_local.eval.grading import Grader, extract_answer
from led_local.eval.passk import summarize
from led_local.eval.problems import load_problems, load_template
from led_local.llama import template as chat_template
from led_local.llama.gguf_info import inspect_model

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from led_local.cli import main; main()"]
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HUGE_STRING = "{{ 'x' * 200000000 }}"
PLAIN = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- case 8: "final answer" only when an answer follows ---------------------------------------
@pytest.mark.parametrize("text, answer", [
    ("So 6 * 3 = 18. This is the final answer to the question.", "18"),
    ("The final answer is 18.", "18"),
    ("**Final Answer:** 42", "42"),
    ("Final answer = 7", "7"),
    ("the final answer: 12 dollars", "12"),
])
def test_final_answer_is_taken_only_when_an_answer_follows(text, answer):
    assert extract_answer(text) == answer


# -- case 10: hostile chat templates -------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    return {name: write_tiny_llama(d / f"{name}.gguf", chat_template=t).path
            for name, t in (("loops", NESTED_LOOPS), ("huge", HUGE_STRING))}


def test_a_hostile_template_is_one_line_error_within_the_limit(hostile, monkeypatch):
    monkeypatch.setattr(chat_template, "TIME_LIMIT_S", 2.0)
    t0 = time.monotonic()
    r = run("generate", hostile["loops"], "-p", "hi", "-n", "2", "-m", "greedy")
    assert r.exit_code == 2 and "did not finish rendering within 2 s" in r.stderr, r.output
    assert "--chat-template FILE" in r.stderr and r.stderr.count("\n") == 1
    assert time.monotonic() - t0 < 30
    t0 = time.monotonic()
    r = run("generate", hostile["huge"], "-p", "hi", "-n", "2", "-m", "greedy")
    assert r.exit_code == 2 and "chat template" in r.stderr, r.output
    assert time.monotonic() - t0 < 30
    r = run("chat", hostile["huge"], "-n", "2", "-m", "greedy")
    assert r.exit_code == 2 and "chat template" in r.stderr


def test_chat_template_file_overrides_a_broken_one(hostile, tmp_path):
    override = tmp_path / "chatml.jinja"
    override.write_text(PLAIN)
    r = run("generate", hostile["huge"], "-p", "hi", "-n", "2", "--chat-template", override,
            "-m", "greedy", "--json")
    assert r.exit_code == 0, r.output
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": "a", "question": "What is 1 + 1?", "answer": "2"}\n')
    out = tmp_path / "r.jsonl"
    r = run("solve", hostile["loops"], problems, "-o", out, "-n", "1", "--max-tokens", "2",
            "-m", "greedy", "--chat-template", override)
    assert r.exit_code == 0, r.output


def test_the_sandboxed_renderer_matches_llama_cpp_python():
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from tinymodel import CHATML_TEMPLATE

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    for t in (CHATML_TEMPLATE, "{{ bos_token }}{% for m in messages %}{{ m | tojson }}"
              "{% endfor %}{% if tools is none %}none{% endif %}{{ eos_token }}"):
        ours = chat_template.render_chat_template(t, messages, bos_token="<s>", eos_token="</s>")
        theirs = Jinja2ChatFormatter(t, eos_token="</s>", bos_token="<s>")(messages=messages)
        assert ours == theirs.prompt


# -- case 11: extraction linear in its input, majority vote bounded ---------------------------
def test_answer_extraction_is_linear_on_unclosed_boxes():
    text = "\\boxed{" * 20_000 + " 7"  # 140k characters: minutes when quadratic
    t0 = time.monotonic()
    assert extract_answer(text) == "7"
    assert extract_answer("\\boxed{" + "1" * 5000 + "} so 3") == "3"  # too long to be one
    assert time.monotonic() - t0 < 5


def test_majority_vote_is_bounded():
    calls = []

    def slow(a: str, b: str) -> bool:
        calls.append((a, b))
        time.sleep(0.2)
        return False

    same = ["9^9^9^9^9"] * 6  # identical hostile answers: grouped without a single check
    summarize({"p": [False] * 6}, ks=[1], answers={"p": same}, equivalent=slow)
    assert calls == []
    distinct = [f"9^9^9^{i}" for i in range(6)]
    t0 = time.monotonic()
    summarize({"p": [False] * 6}, ks=[1], answers={"p": distinct}, equivalent=slow,
              vote_budget_s=0.5)
    assert len(calls) <= 4 and time.monotonic() - t0 < 2
    calls.clear()
    summarize({"p": [False] * 2}, ks=[1], answers={"p": ["1" * 300, "2" * 300]},
              equivalent=slow)
    assert calls == []  # long answers are never sent to the checker


# -- case 12: a prompt too large for the context is skipped, the run goes on ------------------
def test_a_huge_question_is_skipped_and_the_run_goes_on(tmp_path):
    model = write_tiny_llama(tmp_path / "tiny.gguf").path
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "big", "question": "x " * 2_500_000, "answer": "1"})
                        + "\n" + json.dumps({"id": "ok", "question": "What is 1 + 1?"}) + "\n")
    out = tmp_path / "r.jsonl"
    p = subprocess.run([*CLI, "solve", str(model), str(problems), "-o", str(out), "-n", "2",
                        "--max-tokens", "4", "-m", "greedy"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "problem 'big' skipped" in p.stderr
    recs = {(r["problem_id"], r["sample"]): r for r in map(json.loads, out.open())}
    assert len(recs) == 4
    assert recs["big", 0]["finish_reason"] == "skipped" and recs["big", 0]["correct"] is False
    assert "bytes" in recs["big", 0]["error"]
    assert recs["ok", 1]["finish_reason"] in ("stop", "length")
    r = run("passk", out, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped_samples"] == 2


def test_a_prompt_too_long_in_tokens_is_refused_before_decoding(smollm2):
    r = run("generate", smollm2, "-p", "word " * 600, "--ctx", "256", "-n", "2")
    assert r.exit_code == 2 and "more than the context allows (256)" in r.stderr, r.output
    r = run("generate", smollm2, "-p", "word " * 200_000, "--ctx", "256", "-n", "2")
    assert r.exit_code == 2 and "tokens can hold" in r.stderr, r.output


# -- case 14: undecodable, deeply nested and malformed inputs -----------------------------------
def test_non_utf8_and_nested_problem_files_and_templates(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"id": "a", "question": "q"}\n{"id": "b", "question": "\xff"}\n')
    with pytest.raises(LedError, match=r"p.jsonl:2: not UTF-8"):
        load_problems(p)
    p.write_text('{"id": "a", "question": "q"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(LedError, match=r"p.jsonl:2: JSON nested too deeply"):
        load_problems(p)
    t = tmp_path / "t.txt"
    t.write_bytes(b"\xfe{question}")
    with pytest.raises(LedError, match="not UTF-8"):
        load_template(t)


def _gguf(path: Path, kvs: list[tuple[str, int, bytes]]) -> Path:
    """A GGUF v3 with metadata ``(key, value type, encoded value)`` and no tensors."""
    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text.encode())) + text.encode()

    body = b"".join(s(k) + struct.pack("<I", t) + v for k, t, v in kvs)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + body)
    return path


def _u32(v: int) -> tuple[int, bytes]:
    return 4, struct.pack("<I", v)


def _str(v: str) -> tuple[int, bytes]:
    return 8, struct.pack("<Q", len(v)) + v.encode()


ARCH = ("general.architecture", *_str("llama"))
LAYERS = ("llama.block_count", *_u32(4))
WIDTH = ("llama.embedding_length", *_u32(64))


@pytest.mark.parametrize("kvs, key", [
    ([("general.alignment", *_u32(0)), ARCH, LAYERS, WIDTH], "general.alignment"),
    ([("general.alignment", *_str("32")), ARCH, LAYERS, WIDTH], "general.alignment"),
    ([ARCH, ("llama.block_count", *_str("30")), WIDTH], "llama.block_count"),
    ([ARCH, LAYERS, WIDTH, ("llama.attention.layer_norm_rms_epsilon", *_str("1e-5"))],
     "llama.attention.layer_norm_rms_epsilon"),
    ([ARCH, LAYERS, WIDTH, ("llama.final_logit_softcapping", 9,
                            struct.pack("<IQ", 6, 2) + struct.pack("<ff", 1, 2))],
     "llama.final_logit_softcapping"),
    ([ARCH, ("deep", 9, struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 4, 0))], "deep"),
])
def test_malformed_gguf_metadata_is_one_line_naming_the_key(tmp_path, kvs, key):
    path = _gguf(tmp_path / "bad.gguf", kvs)
    with pytest.raises(LedError, match=f"damaged or unsupported GGUF .*'{key}'"):
        inspect_model(path)
    r = run("info", path)
    assert r.exit_code == 2 and "damaged or unsupported GGUF" in r.stderr
    assert "Traceback" not in r.output


# -- case 15: small ones ---------------------------------------------------------------------------
def test_time_s_leaves_out_the_time_spent_grading_others(tmp_path):
    from led_local.decoding.batch import Job, run_jobs
    from led_local.decoding.engine import Engine
    from led_local.decoding.methods import DecodeConfig

    model = write_tiny_llama(tmp_path / "tiny.gguf")
    jobs = [Job(str(i), 0, (1, 5 + i, 9)) for i in range(3)]
    with Engine(model.path, DecodeConfig(method="greedy"), n_ctx=4 * 5 * 16, n_seq=4,
                batch_invariant=True) as engine:
        step = engine.step

        def step_ending_job_0_early(seqs):  # job 0 stops after 2 tokens, the others run on
            step(seqs)
            for s in seqs:
                if s.slot == 0 and len(s.tokens) == 2:
                    s.finish_reason = "stop"

        engine.step = step_ending_job_0_early
        t0 = time.perf_counter()
        finished = []
        for fin in run_jobs(engine, jobs, parallel=3, max_tokens=8, seed=0):
            finished.append((fin.job.key, fin.time_s, time.perf_counter() - t0))
            if fin.job.key == "0":
                time.sleep(1.0)  # a slow grading of this sample while the others decode
    assert finished[0][0] == "0" and len(finished) == 3
    for _key, time_s, wall in finished[1:]:
        assert time_s <= wall - 0.9  # the second spent grading sample 0 is not theirs


def test_ctrl_c_while_the_grader_starts_does_not_kill_it():
    with Grader() as grader:
        def interrupt() -> None:  # Ctrl-C reaches the whole process group
            while grader._process is None or grader._process.pid is None:
                time.sleep(0.001)
            time.sleep(0.05)  # the worker is importing
            os.kill(grader._process.pid, signal.SIGINT)

        t = threading.Thread(target=interrupt)
        t.start()
        assert grader.equivalent("1/2", "0.5") is True
        t.join()


def test_info_head_memory_is_the_heads_size_on_disk(smollm2):
    out = json.loads(run("info", smollm2, "--json").stdout)
    assert 29.5 < out["head_memory_mb"] < 30.5  # Q8_0 49152 x 576, as docs/methods.md says
    assert "SmolLM2: 30 MB" in (ROOT / "docs" / "methods.md").read_text()
