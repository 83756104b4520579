"""Decoding options as data: name, type, default, range, help, command-line flag, HTTP field.

A decoding method (``unit.DecodingMethod``) lists the options it reads; the command line's
options, the server's request fields, the checks and the options table of the docs are all
made from these declarations. Values are checked here, and a wrong one raises
``ConfigError(name, message)``: the CLI shows it under its flag, the server under its field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from led_local.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One decoding option.

    name: the option's name (a config key and, unless ``http`` says otherwise, its JSON field);
    kind: int, float, bool, str or "path"; default: what an unset option means (None: off);
    low/high: inclusive bounds unless ``low_open``/``high_open``; choices: allowed strings;
    flag: the command-line flag (None: ``--`` + name with dashes; "" : not on the command
    line); short: a one-letter alias; invert: the flag sets False (``--no-exploit``);
    http: the request field ("" : not a request field); openai: the protocol declares the
    field itself (temperature, top_p); neutral: a value a client may send to mean "off", taken
    as not given; commands: the commands that offer it (None: every decoding command);
    note: added to a range error; default_help: the default as the help text shows it.
    """

    name: str
    kind: Any
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    short: str | None = None
    invert: bool = False
    http: str | None = None
    openai: bool = False
    neutral: Any = None
    commands: frozenset[str] | None = None
    note: str = ""
    default_help: str | None = None
    tiny: float | None = None  # values in (0, tiny) are refused (0 itself means off/greedy)

    @property
    def cli_flag(self) -> str | None:
        if self.flag == "":
            return None
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def field(self) -> str | None:
        if self.http == "":
            return None
        return self.http or self.name

    def range_text(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return ""

    def check(self, value: Any) -> Any:
        """``value`` if it is valid for this option, else ConfigError naming it."""
        if value is None:
            return value
        if self.choices is not None:
            if value not in self.choices:
                raise ConfigError(self.name, f"must be {' or '.join(self.choices)}, got "
                                  f"{value!r}")
            return value
        if self.kind in (int, float) and not _in_range(self, value):
            note = f" {self.note}" if self.note else ""
            raise ConfigError(self.name, f"must be {self.range_text()}{note}, got {value}")
        if self.tiny is not None and 0 < value < self.tiny:
            raise ConfigError(self.name, f"must be 0 (greedy) or >= {self.tiny}, got {value}")
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _in_range(opt: Option, value: float) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if opt.low is not None and (value <= opt.low if opt.low_open else value < opt.low):
        return False
    return not (opt.high is not None and (value >= opt.high if opt.high_open
                                          else value > opt.high))


# The options several methods share. A method's defaults may differ (hapo: T0 = 1, no filters).
# below 1e-6, 1/T overflows float32 logits: NaN probabilities
TEMPERATURE = Option("temperature", float, 0.6, "Sampling temperature (0 = greedy selection; "
                     "T0 for hapo).", low=0, short="-t", openai=True, tiny=1e-6)
TOP_K = Option("top_k", int, 20, "top-k", low=0, note="(0 = off)")
TOP_P = Option("top_p", float, 0.95, "top-p", low=0, high=1, low_open=True, openai=True,
               neutral=1.0)
MIN_P = Option("min_p", float, 0.0, "min-p", low=0, high=1)
THINK_END = Option("think_end", str, None,
                   "Marker that ends the thinking scope ('' = whole response); solve reads "
                   "the answer after it.", default_help="the chat format's")
LED_NORM = Option("led_norm", bool, False,
                  "Apply the final norm before projecting shallower states (reference ln=1).",
                  default_help="off")
