"""led-local's command line: it parses options and prints; the work happens in the library.

``common`` holds the click group and the shared options; each module beside it adds its
commands to the group when imported.
"""

from led_local.cli import (  # noqa: F401  (each registers its commands)
    decode,
    doctor,
    evaluate,
    hapo,
    info,
    inspect,
    merge,
    serve,
)
from led_local.cli.common import main

__all__ = ["main"]
