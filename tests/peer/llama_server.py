"""``llama-server`` as llama.cpp's server tests start it, answered by ``led-local serve``.

The peer suite (tests/test_peer_suite.py) points ``LLAMA_SERVER_BIN_PATH`` at a launcher that
runs this file with the test run's Python. Each
llama-server option the tests pass is translated to led-local's, dropped when it only tunes
llama-server's own machinery (its value changes no answer), or refused with exit code 2 when
led-local has no counterpart: the test that needs it then fails, and the table
tests/peer/expected.md says why. Sampling goes through ``--method sample`` with the
temperature and the default seed the tests give, as llama-server samples.
"""

from __future__ import annotations

import os
import sys

# llama-server option -> (led-local option, or None: a value led-local has no use for)
TRANSLATED = {"--port": "--port", "--host": "--host", "--temp": "--temperature",
              "--threads": "--threads", "--parallel": "--parallel", "--alias": "--alias",
              "--api-key": "--api-key", "--chat-template-file": "--chat-template",
              "--n-predict": "--max-tokens", "--seed": "--seed"}
# options that tune how llama-server computes, not what it answers
DROPPED_VALUE = {"--batch-size", "--ubatch-size", "-fa", "--n-gpu-layers", "--cache-ram"}
DROPPED_FLAG = {"--cont-batching", "--no-slots", "--jinja", "--no-jinja", "--kv-unified",
                "--offline"}


def refuse(message: str) -> None:
    print(f"llama_server.py: {message}", file=sys.stderr)
    sys.exit(2)


def translate(argv: list[str]) -> list[str]:
    """led-local serve's arguments for llama-server's ``argv``; SystemExit(2) naming the
    first option without a counterpart."""
    out: list[str] = []
    model, ctx, slots = None, None, 4
    i = 0
    while i < len(argv):
        opt = argv[i]
        val = argv[i + 1] if i + 1 < len(argv) else None
        if opt in DROPPED_FLAG:
            i += 1
            continue
        if opt == "--model":
            model = val
        elif opt == "--ctx-size":
            ctx = int(val)
        elif opt == "--parallel":
            slots = int(val)
            out += ["--parallel", val]
        elif opt == "--cors-origins":
            for origin in val.split(","):
                out += ["--cors-origin", origin.strip()]
        elif opt == "--reasoning-format":
            out += ["--reasoning-format", val]
        elif opt == "--reasoning":
            if val != "auto":
                out += ["--thinking", val]
        elif opt == "--verbose":
            out.append("--verbose")
            i += 1
            continue
        elif opt in TRANSLATED:
            out += [TRANSLATED[opt], val]
        elif opt not in DROPPED_VALUE:
            refuse(f"led-local has no counterpart of llama-server's {opt}")
        i += 2
    if model is None:
        refuse("led-local serve needs a local model file (--model)")
    if ctx is not None:  # llama-server's context is shared by its slots, led-local's per slot
        out += ["--ctx", str(max(ctx // slots, 64))]
    return [model, "--method", "sample", *out]


def main() -> None:
    args = translate(sys.argv[1:])
    os.execv(sys.executable, [sys.executable, "-c", "from led_local.cli import main; main()",
                              "serve", *args])


if __name__ == "__main__":
    main()
