"""Reasoning-model families end to end, on tiny models that say a fixed text with each
family's real vocabulary and chat template (tests/scripted.py): the format ``info`` detects,
where the prompt leaves thinking, LED exploring exactly the thinking tokens (none with
thinking off), the server's reasoning_content split, a second turn, ``chat``'s display and
``solve``'s answer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import scripted
from click.testing import CliRunner

from led_local.cli import main
from led_local.decoding import chatformat, switches
from led_local.decoding.chatformat import CLOSED, INSIDE, MODEL

pytestmark = pytest.mark.skipif(not scripted.TEMPLATES.is_dir(),
                                reason="llama.cpp's sources are not built (make install)")

CONTROL, USER = 3, 4  # gguf token types
THINK = {"<think>": USER, "</think>": USER}
ANSWER = "The answer is 4"
REASONING = "Two and two make four."


def specials(*texts: str, kind: int = CONTROL) -> dict[str, int]:
    return dict.fromkeys(texts, kind)


# name: (vocabulary, template, special tokens, end token, script, format, where the prompt
# leaves thinking by default, the text of the explored tokens, the switch, prompt endings
# with what the model says after them)
FAMILIES = {
    "qwen3": dict(
        vocab="qwen2", template="Qwen-Qwen3-0.6B.jinja", specials=THINK, end="<|im_end|>",
        script=f"<think>{REASONING}</think>\n\n{ANSWER}", format="deepseek", scope=MODEL,
        explored=f"{REASONING}</think>", switch="enable_thinking"),
    "qwq": dict(
        vocab="qwen2", template="Qwen-QwQ-32B.jinja", specials=THINK, end="<|im_end|>",
        script=f"{REASONING}</think>\n\n{ANSWER}", format="deepseek", scope=INSIDE,
        explored=f"{REASONING}</think>", switch="enable_thinking"),
    "deepseek-r1-distill-qwen": dict(
        vocab="qwen2", template="deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        specials={**specials("<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"), **THINK},
        end="<｜end▁of▁sentence｜>", script=f"{REASONING}</think>\n\n{ANSWER}",
        format="deepseek", scope=INSIDE, explored=f"{REASONING}</think>",
        switch="enable_thinking"),
    "deepseek-r1-distill-llama": dict(
        vocab="llama-bpe", template="deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
        specials={**specials("<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"), **THINK},
        end="<｜end▁of▁sentence｜>", script=f"{REASONING}</think>\n\n{ANSWER}",
        format="deepseek", scope=INSIDE, explored=f"{REASONING}</think>", switch=None),
    "smollm3": dict(
        vocab="llama-bpe", template="HuggingFaceTB-SmolLM3-3B.jinja",
        specials={**specials("<|im_start|>", "<|im_end|>"), **THINK}, end="<|im_end|>",
        script=f"<think>{REASONING}</think>{ANSWER}", format="deepseek", scope=MODEL,
        explored=f"{REASONING}</think>", switch="enable_thinking"),
    "glm-4.6": dict(
        vocab="qwen2", template="GLM-4.6.jinja",
        specials={**specials("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>",
                             "<|observation|>", "<|endoftext|>"), **THINK},
        end="<|endoftext|>", script=f"<think>{REASONING}</think>{ANSWER}", format="deepseek",
        scope=MODEL, explored=f"{REASONING}</think>", switch="enable_thinking"),
    "kimi-k2-thinking": dict(
        vocab="qwen2", template="Kimi-K2-Thinking.jinja",
        specials={**specials("<|im_user|>", "<|im_assistant|>", "<|im_system|>",
                             "<|im_middle|>", "<|im_end|>"), **THINK},
        end="<|im_end|>", script=f"<think>{REASONING}</think>{ANSWER}", format="deepseek",
        scope=MODEL, explored=f"{REASONING}</think>", switch=None),
    "gpt-oss": dict(
        vocab="qwen2", template="openai-gpt-oss-120b.jinja",
        specials=specials("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>",
                          "<|call|>", "<|constrain|>"),
        end="<|return|>",
        script="<|channel|>analysis<|message|>Add both numbers.<|end|><|start|>assistant"
               f"<|channel|>final<|message|>{ANSWER}",
        gates=(("<|channel|>", "analysis", "final"), ("<|message|>", "final", "The")),
        format="harmony", scope=MODEL, explored="Add both numbers.<|end|>", switch=None,
        switch_text="reasoning_effort",
        reasoning="Add both numbers."),
    "seed-oss": dict(
        vocab="qwen2", template="ByteDance-Seed-OSS.jinja",
        specials=specials("<seed:bos>", "<seed:eos>", "<seed:think>", "</seed:think>"),
        end="<seed:eos>", script=f"<seed:think>{REASONING}</seed:think>{ANSWER}",
        format="seed", scope=MODEL, explored=f"{REASONING}</seed:think>",
        switch="thinking_budget"),
    "ministral-reasoning": dict(
        vocab="llama-bpe", template="mistralai-Ministral-3-14B-Reasoning-2512.jinja",
        specials=specials("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[THINK]",
                          "[/THINK]", "</s>"),
        end="</s>", script=f"[THINK]{REASONING}[/THINK]{ANSWER}", format="mistral-think",
        scope=MODEL, explored=f"{REASONING}[/THINK]", switch=None),
    "apriel-1.6": dict(
        vocab="qwen2", template="Apriel-1.6-15b-Thinker-fixed.jinja",
        specials=specials("<|begin_system|>", "<|begin_user|>", "<|begin_assistant|>",
                          "<|begin_content|>", "<|end|>"),
        end="<|end|>", script=f"{REASONING} [BEGIN FINAL RESPONSE] {ANSWER}", format="apriel",
        scope=INSIDE, explored=f"{REASONING} [BEGIN FINAL RESPONSE]", switch=None),
}
THINKING = {MODEL: "left to the model", INSIDE: "opened by the prompt",
            CLOSED: "closed by the prompt"}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            f = FAMILIES[name]
            made[name] = scripted.write_scripted(
                tmp_path_factory.mktemp(name) / f"{name}.gguf", vocab=f["vocab"],
                template=f["template"], script=f["script"], end=f["end"],
                specials=f["specials"], gates=f.get("gates", ())).path
        return made[name]

    return get


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def generate(model: Path, *extra) -> dict:
    r = run("generate", model, "-p", "What is 2 + 2?", "--json", "-m", "led", "--no-exploit",
            "--led-depths", "4", "-n", "40", "-s", "1", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def explored_text(model: Path, rec: dict) -> str:
    from led_local.llama.runtime import Runtime

    picked = [t for t, d in zip(rec["tokens"], rec["led"]["depths"]) if d is not None]
    firsts = [i for i, d in enumerate(rec["led"]["depths"]) if d is not None]
    assert firsts == list(range(firsts[0], firsts[0] + len(firsts))) if firsts else True
    with Runtime(model, vocab_only=True) as rt:
        return b"".join(rt.token_bytes(t) for t in picked).decode()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_info_names_the_format_the_prompt_and_the_switch(family, name):
    f = FAMILIES[name]
    r = run("info", family(name), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["reasoning_format"] == f["format"]
    assert out["thinking"] == THINKING[f["scope"]]
    assert out["thinking_switch"].startswith(f.get("switch_text", f["switch"] or "none"))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_led_explores_exactly_the_thinking(family, name):
    f = FAMILIES[name]
    model = family(name)
    rec = generate(model)
    assert rec["text"] == f["script"] and rec["finish_reason"] == "stop"
    assert explored_text(model, rec) == f["explored"]
    if f["switch"]:  # switched off, the prompt closes thinking: nothing is explored
        off = generate(model, "--thinking", "off")
        assert off["led"]["explored"] == 0, off
    else:
        r = run("generate", model, "-p", "hi", "--thinking", "off")
        assert r.exit_code == 2 and "no thinking switch" in r.stderr


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_format_divides_the_reply_and_puts_it_back(family, name):
    f = FAMILIES[name]
    fmt = chatformat.get(f["format"])
    split = fmt.split(f["script"], scope=f["scope"])
    assert split.content == ANSWER
    assert split.reasoning.strip() == f.get("reasoning", REASONING)
    # streamed a character at a time, the split is the same
    s = fmt.splitter(scope=f["scope"])
    parts = [s.feed(c) for c in f["script"]] + [s.finish()]
    assert "".join(p.content for p in parts) == split.content
    assert "".join(p.reasoning for p in parts) == split.reasoning
    # the reply goes back into the template, which renders the next turn
    from led_local.llama.runtime import Runtime

    with Runtime(family(name), vocab_only=True) as rt:
        msgs = [{"role": "user", "content": "What is 2 + 2?"},
                fmt.assistant_turn(f["script"], scope=f["scope"]),
                {"role": "user", "content": "And 3 + 3?"}]
        prompt = rt.apply_chat_template(msgs, switches.chat_variables(rt.info.chat_template))
    assert ANSWER in prompt and "And 3 + 3?" in prompt
    assert "<|channel|>final" not in prompt.split("And 3 + 3?")[0].split(ANSWER)[-1]


def test_reasoning_effort_reaches_gpt_oss_and_is_refused_elsewhere(family):
    from led_local.cli.common import chat_model
    from led_local.llama.runtime import Runtime

    info = chat_model(family("gpt-oss"), {"reasoning_effort": "high"})
    with Runtime(info.path, info=info, vocab_only=True) as rt:
        assert "Reasoning: high" in rt.apply_chat_template([{"role": "user", "content": "x"}])
    r = run("generate", family("qwen3"), "-p", "hi", "--reasoning-effort", "high")
    assert r.exit_code == 2 and "--reasoning-effort does not apply" in r.stderr


def test_solve_grades_the_answer_part(family, tmp_path):
    (tmp_path / "t.txt").write_text("{question}")
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "a", "question": "What is 2 + 2?", "answer": "4"}) +
                        "\n")
    for name in ("gpt-oss", "qwen3"):
        out = tmp_path / f"{name}.jsonl"
        r = run("solve", family(name), problems, "-o", out, "-n", "2", "-m", "led",
                "--led-depths", "4", "--max-tokens", "40", "--prompt-template", tmp_path / "t.txt")
        assert r.exit_code == 0, r.output
        recs = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["answer"] for r in recs] == ["4", "4"] and all(r["correct"] for r in recs)
        marker = {"gpt-oss": "<|end|>", "qwen3": "</think>"}[name]
        assert all(r["params"]["led_think_end"] == marker for r in recs)


@pytest.fixture(scope="module")
def servers(family):
    from test_serve import Server

    made = {}
    yield lambda name: made.setdefault(name, Server(family(name), "--parallel", "2",
                                                    "--ctx", "1024", "--threads", "1",
                                                    "--led-depths", "4"))
    for s in made.values():
        s.stop()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_serve_returns_thinking_as_reasoning_content_and_takes_it_back(servers, name):
    srv = servers(name)
    client = srv.client()
    f = FAMILIES[name]
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]
    r = client.chat.completions.create(model="m", messages=msgs, max_tokens=40, seed=1)
    m = r.choices[0].message
    assert m.content == ANSWER
    assert m.model_extra["reasoning_content"].strip() == f.get("reasoning", REASONING)
    stream = client.chat.completions.create(model="m", messages=msgs, max_tokens=40, seed=1,
                                            stream=True)
    content = reasoning = ""
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None:
            content += delta.content or ""
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
    assert content == ANSWER and reasoning.strip() == f.get("reasoning", REASONING)
    # the second turn, as clients resend it: content plus reasoning_content
    again = msgs + [{"role": "assistant", "content": ANSWER,
                     "reasoning_content": m.model_extra["reasoning_content"]},
                    {"role": "user", "content": "And 3 + 3?"}]
    r2 = client.chat.completions.create(model="m", messages=again, max_tokens=40, seed=1)
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens
    if not f.get("gates"):  # a gate's key in the history would turn the script (scripted.py)
        assert r2.choices[0].message.content == ANSWER
    # thinking switched off per request, where the template has a switch
    if f["switch"] == "enable_thinking":
        off = client.chat.completions.create(
            model="m", messages=msgs, max_tokens=40, seed=1,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        assert "reasoning_content" not in (off.choices[0].message.model_extra or {})
    bad = srv.request("POST", "/v1/chat/completions", json.dumps(
        {"messages": msgs, "chat_template_kwargs": {"messages": []}}).encode(),
        {"Content-Type": "application/json"})
    assert bad[0] == 400 and json.loads(bad[1])["error"]["param"] == "chat_template_kwargs"
    fmt = srv.request("POST", "/v1/chat/completions", json.dumps(
        {"messages": msgs, "max_tokens": 40, "reasoning_format": "none"}).encode(),
        {"Content-Type": "application/json"})
    assert json.loads(fmt[1])["choices"][0]["message"]["content"] == f["script"]


@pytest.mark.parametrize("name", ["qwen3", "qwq", "gpt-oss", "seed-oss", "ministral-reasoning"])
def test_chat_shows_thinking_dim_and_the_answer_plain(family, name):
    import pty
    import select

    f = FAMILIES[name]
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", "from led_local.cli import main; main()",
                             "chat", str(family(name)),
                             "-n", "40", "-m", "led", "--led-depths", "4"],
                            stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, timeout: float) -> bool:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        return marker in seen

    try:
        assert read_until(b"> ", 120), seen
        # the second turn renders the first reply back (a gate's key in the history would
        # turn a gated script: scripted.py)
        for _turn in range(1 if f.get("gates") else 2):
            time.sleep(0.3)
            seen = b""
            os.write(master, b"What is 2 + 2?\r")
            assert read_until(b"\n> ", 60), seen
            runs = re.findall(r"\x1b\[(\d+)m([^\x1b]*)\x1b\[0m", seen.decode())
            dim = "".join(t for code, t in runs if code == "2")  # the thinking, no markers
            assert dim.strip() == f.get("reasoning", REASONING)
            assert "".join(t for code, t in runs if code != "2") == ANSWER
        os.write(master, b"/exit\r")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
