"""The HTTP side: Starlette routes, API key, body cap, OpenAI-shaped errors, SSE streams.

Handlers run on the event loop; they validate a request, tokenize its prompt, hand a ``Work``
to the decode thread and turn the events it sends back into OpenAI responses or SSE chunks.
A client that disconnects cancels its work (the decode thread frees its slots before its next
step). Every error is a JSON ``{"error": ...}`` object; nothing raises past the handlers.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
from dataclasses import dataclass
from importlib import resources

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from led_local.decoding.chatformat import MODEL, PLAIN, ChatFormat
from led_local.decoding.generate import new_seed
from led_local.decoding.methods import DecodeConfig
from led_local.decoding.switches import TemplateSwitches
from led_local.decoding.tool_calls import ToolSyntax, tool_grammar
from led_local.errors import ConfigError, LedError
from led_local.serve import protocol as P
from led_local.serve import responses_api
from led_local.serve.access import Access, is_json
from led_local.serve.metrics import Metrics
from led_local.serve.responses import Collector, stream_chunks
from led_local.serve.scheduler import QueueFull, Scheduler, ServeEngine, Work

MAX_BODY = 8 * 1024 * 1024
# the chat page (package data in serve/page/): URL path -> file, media type. It holds no
# secret, so it is served without the API key; the API calls it makes need the key.
PAGE = {"/": ("index.html", "text/html; charset=utf-8"),
        "/chat.css": ("chat.css", "text/css; charset=utf-8"),
        "/chat.js": ("chat.js", "text/javascript; charset=utf-8")}
# the page may reach its own server only (no font, script or API elsewhere)
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
# how long a stream outlives the start of a shutdown: longer than the grace the scheduler
# gives running requests (server.GRACE_S), so that they end with their error event and [DONE]
STREAM_GRACE_S = 5


@dataclass(frozen=True)
class RequestDefaults:
    """What a request that leaves a field unset gets from ``serve``'s options: the most
    tokens of a reply (None: the slot's room) and the seed (None: a new random one)."""

    max_tokens: int | None = None
    seed: int | None = None


@dataclass
class ServerState:
    """What the handlers share: the engine (read-only here), its scheduler, the settings."""

    engine: ServeEngine
    scheduler: Scheduler
    metrics: Metrics
    model_name: str
    base: DecodeConfig
    api_key: str | None
    format: ChatFormat  # how replies divide into reasoning_content and content
    created: int
    switches: TemplateSwitches = TemplateSwitches()  # what the chat template offers
    fingerprint: str = ""  # system_fingerprint: the build and the model file's hash
    tool_syntax: ToolSyntax | None = None  # how the model writes tool calls (None: unknown)
    renders_tools: bool = False  # whether its chat template writes tools into the prompt
    defaults: RequestDefaults = RequestDefaults()


def _error(e: P.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class Guard:
    """ASGI middleware before any route: the Host, Origin and Content-Type checks of
    ``access`` (CORS headers and preflights for ``--cors-origin``), the body cap, the API key,
    the bound on requests in progress (``max_active``: counted from arrival, before their
    bodies are read) and the status count."""

    def __init__(self, app, state: ServerState, *, max_body: int = MAX_BODY,
                 access: Access | None = None, max_active: int | None = None) -> None:
        self.app = app
        self.state = state
        self.max_body = max_body
        self.access = access or Access()
        self.max_active = max_active
        self.active = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status: list[int] = []
        headers = dict(scope["headers"])
        origin = _text(headers.get(b"origin"))
        cors = self.access.cors_headers(origin)

        async def counted_send(message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                if cors:
                    message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        counted = False
        try:
            error = self._check(scope, headers)
            if error is None and scope["method"] == "OPTIONS" and origin is not None:
                await Response(status_code=204, headers=_preflight(headers))(
                    scope, receive, counted_send)
                return
            if error is None:
                error = self._authorize(scope, headers)
            if error is None and scope["method"] == "POST" and self.max_active is not None:
                if self.active >= self.max_active:
                    error = P.APIError(
                        503, f"the server is busy: {self.active} requests in progress "
                        "(--parallel plus --max-queue); retry later", type="server_error",
                        code="queue_full", headers={"Retry-After": "1"})
                else:
                    self.active += 1
                    counted = True
            if error is not None:
                await _error(error)(scope, receive, counted_send)
                return
            await self.app(scope, self._capped(receive), counted_send)
        finally:
            if counted:
                self.active -= 1
            self.state.metrics.requests.labels(status=str(status[0] if status else 499)).inc()

    def _check(self, scope, headers: dict) -> P.APIError | None:
        """Host and Origin: who the request is for and which page sent it."""
        host = _text(headers.get(b"host"))
        if not self.access.host_ok(host):
            return P.APIError(403, f"Host {host!r} is not this server's address (start it with "
                              "--allowed-host NAME to accept that name)",
                              type="permission_error", code="host_not_allowed")
        origin = _text(headers.get(b"origin"))
        if not self.access.origin_ok(origin, host):
            return P.APIError(403, f"cross-origin requests from {origin!r} are refused (start "
                              "the server with --cors-origin ORIGIN to allow that page)",
                              type="permission_error", code="origin_not_allowed")
        return None

    def _authorize(self, scope, headers: dict) -> P.APIError | None:
        """The body cap, the API key and the body's media type."""
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body:
            return P.APIError(413, f"the body exceeds {self.max_body} bytes")
        key = self.state.api_key
        public = scope["path"] == "/health" or (
            scope["path"] in PAGE and scope["method"] in ("GET", "HEAD"))
        if key and not public:
            auth = headers.get(b"authorization", b"")
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, key.encode("utf-8")):
                return P.APIError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                  type="authentication_error", code="invalid_api_key")
        if scope["method"] == "POST" and not is_json(_text(headers.get(b"content-type"))):
            given = _text(headers.get(b"content-type"))
            return P.APIError(415, "POST bodies must be sent as Content-Type: application/json"
                              f", got {given!r}", code="unsupported_media_type")
        return None

    def _capped(self, receive):
        seen = 0

        async def capped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise P.APIError(413, f"the body exceeds {self.max_body} bytes")
            return message

        return capped


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _preflight(headers: dict) -> dict[str, str]:
    """The answer to an allowed origin's CORS preflight (OPTIONS)."""
    asked = _text(headers.get(b"access-control-request-headers"))
    return {"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": asked or "Authorization, Content-Type",
            "Access-Control-Max-Age": "600"}


def build_app(state: ServerState) -> Starlette:
    """The Starlette application over a started scheduler."""

    page = {path: (resources.files("led_local.serve").joinpath("page", name).read_bytes(), kind)
            for path, (name, kind) in PAGE.items()}

    async def chat_page(request: Request) -> Response:
        body, kind = page[request.url.path]
        return Response(body, media_type=kind, headers=PAGE_HEADERS)

    async def health(request: Request) -> Response:
        sched = state.scheduler
        if sched.failure is not None:
            return _error(P.APIError(503, sched.failure, type="server_error",
                                     code="decode_thread_failed"))
        return JSONResponse({"status": "ok", "slots_busy": sched.busy(),
                             "slots_free": sched.parallel - sched.busy(),
                             "queue": len(sched.queue)})

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        return {"id": state.model_name, "object": "model", "created": state.created,
                "owned_by": "led-local", "led": {
                    "reasoning_format": state.format.name,
                    "thinking_switch": bool(state.switches.thinking),
                    "reasoning_effort": state.switches.effort}}

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        if name != state.model_name:
            raise P.APIError(404, f"the model {name!r} does not exist (this server has "
                             f"{state.model_name!r})", param="model", code="model_not_found")
        return JSONResponse(model_card())

    async def chat(request: Request) -> Response:
        return await _complete(request, chat=True)

    async def completions(request: Request) -> Response:
        return await _complete(request, chat=False)

    async def responses(request: Request) -> Response:
        return await _complete(request, chat=True, api="responses")

    async def _complete(request: Request, *, chat: bool, api: str = "chat") -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:  # the client left during its upload: one line, no traceback
            print(f"led-local serve: a client left during its upload to {request.url.path}",
                  file=sys.stderr, flush=True)
            return Response(status_code=499)
        if api == "responses":
            body = await run_in_threadpool(responses_api.to_chat, body)
        req = P.parse(P.ChatRequest if chat else P.CompletionRequest, body)
        work = await run_in_threadpool(_work, state, req, chat)
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(event: dict) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop is gone (shutdown): nobody listens any more
                pass

        work.emit = emit
        try:
            state.scheduler.submit(work)
        except QueueFull as e:
            raise P.APIError(503, f"the server is busy: {e}; retry later",
                             type="server_error", code="queue_full",
                             headers={"Retry-After": "1"}) from None
        rid = (P.new_id("resp").replace("-", "_", 1) if api == "responses"
               else P.new_id("chatcmpl" if chat else "cmpl"))
        meta = {"id": rid, "created": P.now(),
                "model": state.model_name, "seed": work.seed,
                "system_fingerprint": state.fingerprint}
        if api == "responses" and req.stream:
            return EventSourceResponse(
                responses_api.stream_events(queue, work, state.scheduler, meta, req),
                ping=15, sep="\n", shutdown_grace_period=STREAM_GRACE_S)
        if api == "responses":
            collector = await _collect(request, queue, work, chat=True)
            if isinstance(collector, Response):
                return collector
            return JSONResponse(responses_api.response(collector, meta, req))
        if req.stream:
            return EventSourceResponse(
                stream_chunks(queue, work, state.scheduler, meta, chat=chat,
                              include_usage=req.include_usage()),
                ping=15, sep="\n", shutdown_grace_period=STREAM_GRACE_S)
        return await _answer(request, queue, work, meta, chat=chat)

    async def _answer(request: Request, queue: asyncio.Queue, work: Work, meta: dict, *,
                      chat: bool) -> Response:
        collector = await _collect(request, queue, work, chat=chat)
        if isinstance(collector, Response):
            return collector
        return JSONResponse(collector.response(meta))

    async def _collect(request: Request, queue: asyncio.Queue, work: Work, *,
                       chat: bool) -> Collector | Response:
        """A non-streamed request's events, gathered (a 499 if the client leaves)."""
        collector = Collector(work, chat=chat)
        left = asyncio.ensure_future(_disconnected(request))
        try:
            while not collector.done:
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, left}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    state.scheduler.cancel(work)
                    return Response(status_code=499)
                collector.add(get.result())
        finally:
            left.cancel()
        if collector.error:
            raise P.APIError(collector.status, collector.error, type="server_error",
                             headers={"Retry-After": "1"} if collector.status == 503 else None)
        return collector

    async def api_error(request: Request, exc: Exception) -> Response:
        return _error(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error(P.APIError(exc.status_code, f"{request.method} {request.url.path}: "
                                 f"{exc.detail}", code=code))

    async def crash(request: Request, exc: Exception) -> Response:
        return _error(P.APIError(500, f"internal error: {type(exc).__name__}",
                                 type="server_error"))

    api = [("/models", models, "GET"), ("/models/{model:path}", model, "GET"),
           ("/chat/completions", chat, "POST"), ("/completions", completions, "POST"),
           ("/responses", responses, "POST")]
    routes = [
        *(Route(path, chat_page, methods=["GET"]) for path in PAGE),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        # the API under /v1, and at the root as well for clients whose base URL lacks /v1
        # (llama-server answers both)
        *(Route(prefix + path, handler, methods=[verb]) for path, handler, verb in api
          for prefix in ("/v1", "")),
    ]
    app = Starlette(routes=routes, exception_handlers={
        P.APIError: api_error, HTTPException: http_error, Exception: crash})
    return app


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _work(state: ServerState, req: P.CommonRequest, chat: bool) -> Work:
    """Validate a parsed request against the model and turn it into the decode thread's Work
    (runs in a worker thread: the chat template and the tokenizer take a while)."""
    engine = state.engine
    cfg = req.decode_config(state.base)
    try:
        engine.check_config(cfg)
    except LedError as e:
        param = P.field_name(e.option) if isinstance(e, ConfigError) else "method"
        raise P.APIError(400, e.render(P.field_name), param=param) from None
    if req.n > state.scheduler.parallel:
        raise P.APIError(400, f"n must be <= {state.scheduler.parallel} (the server's "
                         f"parallel setting), got {req.n}", param="n")
    rt = engine.rt
    grammar = req.constraint()
    if grammar is not None:
        param = ("grammar" if req.grammar is not None else
                 "json_schema" if req.json_schema is not None else "response_format")
        try:
            grammar.check(rt.vocab, param=param)
        except ConfigError as e:
            raise P.APIError(400, str(e), param=param) from None
    fmt, scope = PLAIN, MODEL
    functions, choice = [], None
    if chat:
        fmt = req.chat_format(state.format)
        variables = req.chat_variables(state)
        functions, choice = req.tool_request()
        if functions:
            _check_tools(state)
    try:
        if chat:
            messages = [m.for_template(state.format) for m in req.messages]
            tools = [{"type": "function", "function": f} for f in functions] or None
            prompt = rt.apply_chat_template(messages, variables=variables, tools=tools,
                                            add_generation_prompt=req.add_generation_prompt)
            if req.continuation():
                prompt = _continued(prompt, req.messages[-1].text())
            scope = fmt.prompt_scope(prompt)
            tokens = rt.tokenize(prompt)
        elif isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], int):
            tokens = list(req.prompt)
            if not all(0 <= t < rt.n_vocab for t in tokens):
                raise P.APIError(400, f"prompt: token ids must be in [0, {rt.n_vocab})",
                                 param="prompt")
        else:
            text = req.prompt if isinstance(req.prompt, str) else "".join(req.prompt)
            tokens = rt.tokenize(text)
    except LedError as e:
        raise P.APIError(400, e.render(P.field_name),
                         param="messages" if chat else "prompt") from None
    if not tokens:
        raise P.APIError(400, "the prompt is empty", param="messages" if chat else "prompt")
    room = rt.n_ctx_seq - len(tokens)
    if room < 1:
        raise P.APIError(400, f"the prompt has {len(tokens)} tokens, more than the context "
                         f"of {rt.n_ctx_seq} allows (the server's ctx)", param="messages" if chat
                         else "prompt", code="context_length_exceeded")
    if choice is not None and choice != "auto":
        grammar = _forced_call(state, req, fmt, scope, functions, choice, grammar)
    if req.ignore_eos and grammar is not None:  # a finished grammar allows the end alone
        raise P.APIError(400, "ignore_eos cannot be combined with a grammar, a JSON schema "
                         "or a forced tool call", param="ignore_eos")
    limit = req.limit() or state.defaults.max_tokens
    max_tokens = room if limit is None else min(limit, room)
    seed = req.seed if req.seed is not None else state.defaults.seed
    return Work(tokens=tokens, cfg=cfg, n=req.n, max_tokens=max_tokens,
                seed=new_seed() if seed is None else seed, stop=req.stops(),
                emit=lambda event: None, top_n=req.top_n(),
                logprobs=req.logprobs is True if chat else req.logprobs is not None,
                format=fmt, scope=scope,
                cache_prompt=req.cache_prompt, led_tokens=req.led_tokens(), grammar=grammar,
                ignore_eos=req.ignore_eos,
                tools=state.tool_syntax if choice is not None else None)


def _continued(prompt: str, final: str) -> str:
    """The rendered ``prompt`` cut right after the final message's text ``final``, so that
    the reply continues it (what the template writes after it, its end of turn, goes)."""
    final = final if final in prompt else final.strip()  # templates that trim content
    at = prompt.rfind(final) if final else -1
    if at < 0:
        raise P.APIError(400, "continue_final_message: the chat template does not write the "
                         "final message's text as it is", param="continue_final_message")
    return prompt[:at + len(final)]


def _check_tools(state: ServerState) -> None:
    """Tools need a template that writes them and a known call syntax (else a 400)."""
    name = state.model_name
    if not state.renders_tools:
        raise P.APIError(400, f"tools: the chat template of {name} does not take tools (it "
                         "writes no tool list into the prompt); serve a model, or a "
                         "`chat_template`, with tool support", param="tools",
                         code="tools_not_supported")
    if state.tool_syntax is None:
        raise P.APIError(400, f"tools: led-local does not know how {name}'s template writes "
                         "tool calls (hermes <tool_call>, Llama 3 JSON, Mistral [TOOL_CALLS], "
                         "DeepSeek or harmony)", param="tools", code="tools_not_supported")


def _forced_call(state: ServerState, req: P.ChatRequest, fmt: ChatFormat, scope: str,
                 functions: list[dict], choice: str, grammar):
    """The grammar that makes the reply call a tool (``required``) or the named one."""
    if grammar is not None:
        raise P.APIError(400, "tool_choice required or a named function cannot be combined "
                         "with grammar or a JSON response_format", param="tool_choice")
    if choice.startswith("name:"):
        functions = [f for f in functions if f["name"] == choice[5:]]
    try:
        forced = tool_grammar(state.tool_syntax, functions, fmt=fmt, scope=scope,
                              parallel=bool(req.parallel_tool_calls))
        forced.check(state.engine.rt.vocab, param="tools")
    except ConfigError as e:
        raise P.APIError(400, e.render(P.field_name), param="tools") from None
    return forced
