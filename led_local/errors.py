"""led-local's exception classes: every user-fixable problem is a LedError.

A message names an option in backquotes, by its option name (`led_depths`): the CLI shows it
as the flag (``--led-depths``), the server as the JSON field, plain ``str`` as the name.
"""

import re

_OPTION = re.compile(r"`([a-z][a-z0-9_]*)`")


class LedError(Exception):
    """A problem the user can fix: bad input, a missing file, an out-of-range option.

    The CLI prints it as one line on stderr and exits with code 2.
    """

    def __str__(self) -> str:
        return _OPTION.sub(r"\1", super().__str__())

    def render(self, name_of) -> str:
        """The message with ``name_of(option)`` for every option named in it."""
        return _OPTION.sub(lambda m: name_of(m.group(1)), super().__str__())


class UnsupportedModelError(LedError):
    """The model's graph lacks what LED needs (its blocks' outputs)."""


class ContextFullError(LedError):
    """The prompt or the conversation does not fit in the context window."""


class OutputError(LedError):
    """Writing an output failed part-way (disk full, file too large, made read-only): what
    was written before is intact. The CLI prints one line and exits with code 1."""


class ConfigError(LedError):
    """A decoding option with a wrong value, named by its option name (``led_depths``); the
    CLI shows it as its flag (``--led-depths``), the server as its JSON field."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"`{option}` {message}")
        self.option = option
        self.message = message
