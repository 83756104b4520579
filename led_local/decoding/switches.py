"""Thinking switches: the variables a chat template reads to think or not, and how hard.

Families spell the switch differently (Qwen3, GLM, SmolLM3 and Nemotron: ``enable_thinking``;
DeepSeek-V3.1, Granite 3.3, Kimi-K3: ``thinking``; Seed-OSS: ``thinking_budget`` 0; gpt-oss:
``reasoning_effort``), so a template's switches are found by rendering it: a variable is a
switch when a one-message conversation renders differently with it on and off. As llama.cpp
does, thinking is on by default wherever the template has a switch (some templates, QwQ's and
DeepSeek-R1-Distill-Qwen's as llama.cpp ships them, close thinking when nobody says).

``chat_variables`` turns the user's choices (``thinking``, ``reasoning_effort``,
``chat_template_kwargs``) into the variables every render of that model passes to its template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from led_local.errors import ConfigError

EFFORTS = ("low", "medium", "high")
# names a template sees from the renderer itself; chat_template_kwargs cannot replace them
RESERVED = frozenset({"messages", "add_generation_prompt", "bos_token", "eos_token", "tools",
                      "tool_choice", "functions", "function_call", "raise_exception",
                      "strftime_now"})
PROBE = [{"role": "user", "content": "What is 2 + 2?"}]


@dataclass(frozen=True)
class Switch:
    """A template variable that turns thinking on (``on``; None: leave it unset, the
    template's default) and off (``off``)."""

    variable: str
    on: object
    off: object


CANDIDATES = (Switch("enable_thinking", True, False), Switch("thinking", True, False),
              Switch("thinking_budget", None, 0))


@dataclass(frozen=True)
class TemplateSwitches:
    """What a chat template offers: its thinking switches and whether it reads
    ``reasoning_effort``."""

    thinking: tuple[Switch, ...] = ()
    effort: bool = False

    def describe(self) -> str:
        parts = [s.variable for s in self.thinking]
        if self.effort:
            parts.append("reasoning_effort " + "/".join(EFFORTS))
        return ", ".join(parts) if parts else "none"


def _render(template: str, variables: dict) -> str | None:
    from led_local.llama.template import TemplateError, render_chat_template

    try:
        return render_chat_template(template, PROBE, bos_token="", eos_token="",
                                    variables=variables)
    except TemplateError:
        return None


def template_switches(template: str | None) -> TemplateSwitches:
    """The switches of ``template`` (a chat template's text), found by rendering it."""
    if not template:
        return TemplateSwitches()
    found = []
    for s in CANDIDATES:
        if s.variable not in template:
            continue
        on = _render(template, {} if s.on is None else {s.variable: s.on})
        off = _render(template, {s.variable: s.off})
        if on is not None and off is not None and on != off:
            found.append(s)
    return TemplateSwitches(tuple(found), "reasoning_effort" in template)


def parse_kwargs(text: str | None) -> dict:
    """``--chat-template-kwargs JSON``: a JSON object of template variables."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError("chat_template_kwargs", f"is not valid JSON ({e.msg} at character "
                          f"{e.pos})") from None
    return check_kwargs(value)


def check_kwargs(value: object) -> dict:
    if not isinstance(value, dict):
        raise ConfigError("chat_template_kwargs", "must be a JSON object of template variables")
    taken = sorted(RESERVED & set(value))
    if taken:
        raise ConfigError("chat_template_kwargs", f"cannot set {', '.join(taken)} (the "
                          "renderer's own variables)")
    return dict(value)


def chat_variables(template: str | None, *, thinking: bool | None = None,
                   reasoning_effort: str | None = None, kwargs: dict | None = None,
                   switches: TemplateSwitches | None = None) -> dict:
    """The template variables for these choices: every thinking switch on (default) or off,
    the effort, then ``kwargs`` as given (they win). Refuses a switch the template lacks."""
    sw = switches if switches is not None else template_switches(template)
    out: dict = {}
    if thinking is False and not sw.thinking:
        raise ConfigError("thinking", "cannot be off: this model's chat template has no "
                          "thinking switch (enable_thinking, thinking or thinking_budget)")
    for s in sw.thinking:
        value = s.on if thinking is not False else s.off
        if value is not None:
            out[s.variable] = value
    if reasoning_effort is not None:
        if reasoning_effort not in EFFORTS:
            raise ConfigError("reasoning_effort", f"must be one of {', '.join(EFFORTS)}, got "
                              f"{reasoning_effort!r}")
        if not sw.effort:
            raise ConfigError("reasoning_effort", "does not apply: this model's chat template "
                              "does not read reasoning_effort")
        out["reasoning_effort"] = reasoning_effort
    out.update(kwargs or {})
    return out
