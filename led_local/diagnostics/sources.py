"""What ``inspect`` analyses: (prompt, response) token pairs from text, generation or a run.

- ``text_response``: a given response, tokenized as a continuation (no BOS, specials parsed);
- ``generate_responses``: responses generated with any decoding method, one per prompt;
- ``run_items``: responses recorded by ``solve``, their prompts rebuilt exactly as solve built
  them (the problem file and template the run used, through the chat template); a run made
  with another model or another prompt template is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from led_local.decoding.engine import Engine
from led_local.decoding.generate import generate
from led_local.decoding.methods import DecodeConfig
from led_local.errors import LedError
from led_local.eval.problems import Problem, render
from led_local.eval.records import problem_hash
from led_local.eval.runfile import read_records
from led_local.eval.solve import SolveOptions, fingerprint
from led_local.llama.gguf_info import ModelInfo
from led_local.llama.runtime import Runtime


@dataclass
class Item:
    """One response to analyse: prompt and response token ids, and where it came from
    (``label``: problem_id and sample for runs and problem sets, empty otherwise)."""

    prompt: list[int]
    response: list[int]
    label: dict = field(default_factory=dict)


def chat_prompt(rt: Runtime, text: str, *, raw: bool = False, system: str | None = None
                ) -> list[int]:
    """Prompt token ids as ``generate`` builds them: the chat template unless ``raw``."""
    if raw:
        return rt.tokenize(text)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return rt.tokenize(rt.apply_chat_template(messages))


def problem_chat(rt: Runtime, template: str, problem: Problem) -> str:
    """The prompt text ``solve`` builds for ``problem``: the user message, chat template."""
    return rt.apply_chat_template([{"role": "user", "content": render(template, problem)}])


def problem_prompt(rt: Runtime, template: str, problem: Problem) -> list[int]:
    """The prompt tokens ``solve`` builds for ``problem``."""
    return rt.tokenize(problem_chat(rt, template, problem))


def text_response(rt: Runtime, text: str) -> list[int]:
    """A given response's tokens: a continuation of the prompt, special tokens parsed."""
    tokens = rt.tokenize(text, bos=False)
    if not tokens:
        raise LedError("`response` is empty")
    return tokens


def generate_responses(engine: Engine, prompts: list[list[int]], *, max_tokens: int,
                       seed: int, on_done: Callable[[int], None] = lambda n: None
                       ) -> list[list[int]]:
    """One response per prompt, generated with ``engine``'s method and ``seed`` (each prompt
    from the same seed, as ``generate`` would); ``on_done`` gets each response's length."""
    out = []
    for prompt in prompts:
        result = generate(engine, prompt, max_tokens=max_tokens, seed=seed)
        out.append(result.tokens)
        on_done(len(result.tokens))
    return out


def _select(records: list[dict], path: str, *, problem: str | None, sample: int | None,
            limit: int | None) -> list[dict]:
    if problem is not None:
        ids = sorted({str(r["problem_id"]) for r in records})
        records = [r for r in records if str(r["problem_id"]) == problem]
        if not records:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise LedError(f"`problem`: unknown problem id {problem!r} in {path} "
                           f"(it has {shown})")
    if sample is not None:
        records = [r for r in records if int(r["sample"]) == sample]
        if not records:
            raise LedError(f"`sample` {sample}: no such sample in {path}"
                           + (f" for problem {problem!r}" if problem is not None else ""))
    if limit is not None:
        records = records[:limit]
    return records


def run_items(rt: Runtime, info: ModelInfo, path: str, problems: list[Problem],
              template: str, *, problem: str | None = None, sample: int | None = None,
              limit: int | None = None) -> list[Item]:
    """The responses of the run file ``path`` (optionally one problem, one sample index, the
    first ``limit``), with their prompts rebuilt from ``problems`` and ``template``."""
    records = read_records(path)
    if not records:
        raise LedError(f"{path} holds no samples")
    expect = fingerprint(info, DecodeConfig(), SolveOptions(samples=1), template)
    for key, what in (("model", "model"), ("prompt_template", "prompt template")):
        found = next((r.get(key) for r in records if r.get(key) != expect[key]), expect[key])
        if found != expect[key]:
            hint = "" if key == "model" else " (pass the run's file with `prompt_template`)"
            raise LedError(f"{path} was made with another {what} ({found!r}, this one is "
                           f"{expect[key]!r}){hint}")
    by_id = {p.id: p for p in problems}
    items = []
    for rec in _select(records, path, problem=problem, sample=sample, limit=limit):
        pid = str(rec["problem_id"])
        if pid not in by_id:
            raise LedError(f"problem {pid!r} of {path} is not in the problem file; pass the "
                           "one the run used with `problems`")
        p = by_id[pid]
        chat = problem_chat(rt, template, p)
        recorded = rec.get("problem_hash")  # question, gold and the full prompt, when recorded
        if (rec.get("gold") != p.answer if recorded is None
                else recorded != problem_hash(p.question, p.answer, chat)):
            raise LedError(f"problem {pid!r} differs between the problem file and {path} (its "
                           "question, answer or prompt); pass the problem file and "
                           "`prompt_template` the run used")
        text = rec.get("text")
        if not isinstance(text, str):
            raise LedError(f"{path}: the record of problem {pid!r} sample {rec['sample']} "
                           "has no text")
        response = rt.tokenize(text, bos=False) if text else []
        items.append(Item(rt.tokenize(chat), response,
                          {"problem_id": pid, "sample": int(rec["sample"])}))
    return items
