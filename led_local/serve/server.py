"""Start and stop the server: load the engine, start the decode thread, run uvicorn.

uvicorn handles Ctrl-C and SIGTERM: it stops accepting connections, gives in-flight requests
``GRACE_S`` seconds to finish and then cancels them (which frees their slots); the decode
thread is stopped and the model freed after that.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from led_local.decoding import chatformat
from led_local.decoding.methods import DecodeConfig
from led_local.errors import LedError
from led_local.serve.app import MAX_BODY, Guard, ServerState, build_app
from led_local.serve.metrics import Metrics
from led_local.serve.scheduler import Scheduler, ServeEngine

GRACE_S = 3


def _ignore(*_args: object) -> None:
    """A signal uvicorn has already acted on."""


def serve(model, cfg: DecodeConfig, *, host: str = "127.0.0.1", port: int = 8080,
          parallel: int = 4, ctx: int = 4096, max_queue: int = 64, api_key: str | None = None,
          reasoning_format: str | None = None, alias: str | None = None,
          threads: int | None = None, capture: str = "auto", projection: str = "auto",
          verbose: bool = False) -> None:
    """Serve ``model`` until interrupted; ``ctx`` is each slot's context (tokens),
    ``reasoning_format``: a chat format's name, or None to detect it from the template;
    ``model``: a path, or a ModelInfo (with the chat template to use)."""
    import uvicorn

    if not 1 <= parallel <= 256:
        raise LedError(f"`parallel` must be between 1 and 256, got {parallel}")
    if max_queue < 0:
        raise LedError(f"`max_queue` must be >= 0, got {max_queue}")
    if not 0 <= port <= 65535:
        raise LedError(f"`port` must be between 0 and 65535, got {port}")
    engine = ServeEngine(model, cfg, n_ctx=ctx * parallel, n_seq=parallel, threads=threads,
                         capture=capture, projection=projection, verbose=verbose)
    try:
        fmt = (chatformat.detect(engine.info.chat_template) if reasoning_format is None
               else chatformat.get(reasoning_format))
        metrics = Metrics()
        scheduler = Scheduler(engine, parallel=parallel, max_queue=max_queue, metrics=metrics)
        state = ServerState(
            engine=engine, scheduler=scheduler, metrics=metrics,
            model_name=alias or Path(engine.info.path).name.removesuffix(".gguf"),
            base=cfg, api_key=api_key, format=fmt,
            created=int(time.time()))
        app = Guard(build_app(state), state, max_body=MAX_BODY)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=GRACE_S, lifespan="off")
        scheduler.start()
        print(f"led-local serve: {state.model_name} ({cfg.method}) on http://{host}:{port}/v1, "
              f"{parallel} slots of {engine.rt.n_ctx_seq} tokens", file=sys.stderr, flush=True)
        # uvicorn handles the signals while it runs and raises them again once it has shut
        # down; these handlers receive them then, so that the model is freed and exit is 0
        previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            uvicorn.Server(config).run()
        finally:
            scheduler.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print("led-local serve: stopped", file=sys.stderr, flush=True)
    finally:
        engine.close()
