"""Connections: bounded in number, timed out while they owe us a request, fd shortage logged once.

uvicorn keeps a connection that never sends a request (or sends it a byte at a time) open
forever, and accepts until the process runs out of file descriptors, after which every accept
fails and logs a traceback. Here a connection must deliver a complete request (headers and
body) within ``request_timeout`` seconds of opening or of its previous response; at most
``max_connections`` are open, and a new one beyond that closes the oldest connection that is
only waiting (never one whose request is being answered), or itself when there is none.
"""

from __future__ import annotations

import resource
import sys

from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_TIMEOUT_S = 30.0
FD_RESERVE = 64  # descriptors kept for the model, the template worker, logs and pipes


def default_max_connections() -> int:
    """Open connections allowed: what the descriptor limit leaves, at most 1,024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(8, min(1024, soft - FD_RESERVE))


def protocol(*, max_connections: int, request_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the bounds of the module docstring."""

    class BoundedH11(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline = None
            self._wait()
            if len(self.connections) > max_connections:
                waiting = [c for c in self.connections
                           if c is not self and getattr(c, "_waiting", False)]
                victim = min(waiting, key=lambda c: c._since) if waiting else self
                victim.transport.close()

        def _wait(self) -> None:
            """From now on the peer owes a complete request."""
            self._waiting = True
            self._since = self.loop.time()
            self._cancel()
            self._deadline = self.loop.call_later(request_timeout, self._expire)

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            if self._waiting and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = self.cycle
            if self._waiting and cycle is not None and not cycle.more_body \
                    and not cycle.response_complete:
                self._waiting = False  # a whole request: the time to answer is ours
                self._cancel()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._wait()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            self._waiting = False
            super().connection_lost(exc)

    return BoundedH11


class AcceptErrors:
    """An event-loop exception handler that reports running out of file descriptors once (per
    shortage) instead of a traceback per failed accept."""

    def __init__(self) -> None:
        self.short = False

    def __call__(self, loop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (23, 24):  # ENFILE, EMFILE
            if not self.short:
                self.short = True
                print("led-local serve: out of file descriptors (ulimit -n); new connections "
                      "wait until some close", file=sys.stderr, flush=True)
            return
        self.short = False
        loop.default_exception_handler(context)
