"""Start and stop the server: bind, load the engine, start the decode thread, run uvicorn.

The socket is bound before the model loads, so that a port in use or an unknown host is one
line at once, and the port announced is the real one (``--port 0``).

uvicorn handles Ctrl-C and SIGTERM: it stops accepting connections and gives in-flight
requests ``GRACE_S`` seconds to finish; the scheduler then ends what is left with an
OpenAI-shaped 503 (streams: a final error event and ``[DONE]``), and the decode thread is
stopped and the model freed after that.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

from led_local.decoding import tool_calls
from led_local.decoding.methods import DecodeConfig
from led_local.decoding.switches import template_switches
from led_local.errors import LedError
from led_local.serve.access import Access, check_api_key
from led_local.serve.app import MAX_BODY, Guard, RequestDefaults, ServerState, build_app
from led_local.serve.connections import (
    REQUEST_TIMEOUT_S,
    AcceptErrors,
    default_max_connections,
    protocol,
)
from led_local.serve.metrics import Metrics
from led_local.serve.scheduler import PREFILL_CHUNK, Scheduler, ServeEngine

GRACE_S = 3


def _ignore(*_args: object) -> None:
    """A signal uvicorn has already acted on."""


def _uvicorn_server(config, scheduler: Scheduler):
    """uvicorn's server, which also starts the scheduler's drain on Ctrl-C or SIGTERM: what
    still runs after ``GRACE_S`` ends with a 503 (a final SSE error event and ``[DONE]`` for a
    stream) before uvicorn would cancel it."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            scheduler.drain(GRACE_S)
            super().handle_exit(sig, frame)

        async def serve(self, sockets=None) -> None:
            asyncio.get_running_loop().set_exception_handler(AcceptErrors())
            await super().serve(sockets)

    return Server(config)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port), bound before the model loads
    so that a port in use or an unknown host is one line at once; LedError otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise LedError(f"cannot listen on {host}:{port}: unknown host ({e})") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise LedError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def system_fingerprint(path) -> str:
    """``fp_`` and 16 hex digits of the build id and the model file's SHA-256: what decides
    the tokens a seed gives (computed once, at start)."""
    import hashlib

    from led_local.eval.identity import build_id, model_sha256

    digest = hashlib.sha256(f"{build_id()}\n{model_sha256(path)}".encode()).hexdigest()
    return f"fp_{digest[:16]}"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"


def serve(model, cfg: DecodeConfig, *, host: str = "127.0.0.1", port: int = 8080,
          parallel: int = 4, ctx: int = 4096, max_queue: int = 64, api_key: str | None = None,
          reasoning_format: str | None = None, alias: str | None = None,
          threads: int | None = None, capture: str = "auto", projection: str = "auto",
          verbose: bool = False,
          allowed_hosts: tuple[str, ...] = (), cors_origins: tuple[str, ...] = (),
          request_timeout: float = REQUEST_TIMEOUT_S,
          prefill_chunk: int | None = PREFILL_CHUNK, max_tokens: int | None = None,
          seed: int | None = None) -> None:
    """Serve ``model`` until interrupted; ``ctx`` is each slot's context (tokens),
    ``model``: a path, or a ModelInfo (with the chat template to use); ``reasoning_format``: a
    chat format's name, or None to detect it from the template; ``allowed_hosts`` and
    ``cors_origins``: see ``access.Access``; ``request_timeout``: see ``connections``;
    ``prefill_chunk``: prompt tokens evaluated between two decode steps; ``max_tokens`` and
    ``seed``: what a request that sets none gets (None: the slot's room, a random seed)."""
    if prefill_chunk is not None and prefill_chunk < 1:
        raise LedError(f"`prefill_chunk` must be >= 1, got {prefill_chunk}")
    if max_tokens is not None and max_tokens < 1:
        raise LedError(f"`max_tokens` must be >= 1, got {max_tokens}")
    if not 1 <= parallel <= 256:
        raise LedError(f"`parallel` must be between 1 and 256, got {parallel}")
    if max_queue < 0:
        raise LedError(f"`max_queue` must be >= 0, got {max_queue}")
    if not 0 <= port <= 65535:
        raise LedError(f"`port` must be between 0 and 65535, got {port}")
    if not 0 < request_timeout <= 3600:
        raise LedError(f"`request_timeout` must be in (0, 3600] seconds, got {request_timeout}")
    if ctx < 16:
        raise LedError(f"`ctx` must be >= 16, got {ctx}")
    if api_key is not None and (problem := check_api_key(api_key)):
        raise LedError(problem)
    for origin in cors_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise LedError(f"`cors_origin` must be '*' or http(s)://HOST[:PORT], got {origin!r}")
    sock = listen(host, port)
    try:
        _serve(sock, model, cfg, host=host, parallel=parallel, ctx=ctx, max_queue=max_queue,
               api_key=api_key, reasoning_format=reasoning_format, alias=alias, threads=threads,
               capture=capture, projection=projection, verbose=verbose,
               access=Access(host, tuple(allowed_hosts), tuple(cors_origins)),
               request_timeout=request_timeout, prefill_chunk=prefill_chunk,
               defaults=RequestDefaults(max_tokens, seed))
    finally:
        sock.close()


def _serve(sock: socket.socket, model, cfg: DecodeConfig, *, host: str, parallel: int,
           ctx: int, max_queue: int, api_key: str | None, reasoning_format: str | None,
           alias: str | None, threads: int | None, capture: str, projection: str, verbose: bool,
           access: Access, request_timeout: float, prefill_chunk: int | None,
           defaults: RequestDefaults) -> None:
    import uvicorn

    engine = ServeEngine(model, cfg, n_ctx=ctx * parallel, n_seq=parallel, threads=threads,
                         capture=capture, projection=projection, verbose=verbose,
                         reasoning_format=reasoning_format)
    try:
        metrics = Metrics()
        scheduler = Scheduler(engine, parallel=parallel, max_queue=max_queue, metrics=metrics,
                              prefill_chunk=prefill_chunk)
        state = ServerState(
            engine=engine, scheduler=scheduler, metrics=metrics,
            model_name=alias or Path(engine.info.path).name.removesuffix(".gguf"),
            base=engine.cfg, api_key=api_key, format=engine.format,
            created=int(time.time()), switches=template_switches(engine.info.chat_template),
            fingerprint=system_fingerprint(engine.info.path),
            tool_syntax=tool_calls.detect(engine.info.chat_template, engine.format.name),
            renders_tools=bool(engine.info.chat_template) and tool_calls.renders_tools(
                lambda m, t: engine.rt.apply_chat_template(m, tools=t)),
            defaults=defaults)
        app = Guard(build_app(state), state, max_body=MAX_BODY, access=access,
                    max_active=parallel + max_queue)
        port = sock.getsockname()[1]
        http = protocol(max_connections=default_max_connections(),
                        request_timeout=request_timeout)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=http,
                                timeout_graceful_shutdown=GRACE_S + 5, lifespan="off")
        scheduler.start()
        print(f"led-local serve: {state.model_name} ({cfg.method}) on {_url(host, port)}, "
              f"{parallel} slots of {engine.rt.n_ctx_seq} tokens", file=sys.stderr, flush=True)
        # uvicorn handles the signals while it runs and raises them again once it has shut
        # down; these handlers receive them then, so that the model is freed and exit is 0
        previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            _uvicorn_server(config, scheduler).run(sockets=[sock])
        finally:
            scheduler.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print("led-local serve: stopped", file=sys.stderr, flush=True)
    finally:
        engine.close()
