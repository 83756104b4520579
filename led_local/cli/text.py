"""Text that reaches a command from outside: options given as raw bytes, lines typed in chat.

The shell hands arguments over as bytes; Python decodes those that are not UTF-8 with
surrogate escapes, which fail later, deep inside tokenization. They are refused up front, one
line naming the option and the byte.
"""

from __future__ import annotations

import click

from led_local.cli.common import UserError


def bad_utf8(text: str) -> str | None:
    """Where ``text`` is not valid UTF-8 ("byte 0xff at position 2"), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        ch = ord(text[e.start])
        if 0xDC80 <= ch <= 0xDCFF:  # a surrogate escape: the byte the shell gave
            return f"byte {ch - 0xDC00:#04x} at position {e.start}"
        return f"a lone surrogate U+{ch:04X} at position {e.start}"
    return None


def utf8(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """click callback: refuse an option whose text is not valid UTF-8."""
    if value is not None and (where := bad_utf8(value)):
        raise UserError(f"{param.opts[-1]} is not valid UTF-8 text ({where})")
    return value
