"""led-local's exception classes: every user-fixable problem is a LedError."""


class LedError(Exception):
    """A problem the user can fix: bad input, a missing file, an out-of-range option.

    The CLI prints it as one line on stderr and exits with code 2.
    """


class UnsupportedModelError(LedError):
    """The model's graph lacks what LED needs (its blocks' outputs)."""


class ContextFullError(LedError):
    """The prompt or the conversation does not fit in the context window."""


class OutputError(LedError):
    """Writing an output failed part-way (disk full, file too large, made read-only): what
    was written before is intact. The CLI prints one line and exits with code 1."""
