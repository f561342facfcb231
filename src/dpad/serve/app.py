"""The OpenAI-compatible HTTP server (FastAPI): completions, chat completions, streaming, metrics.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (OpenAI schema, SSE streaming
that sends each block's text as soon as the block is committed), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text format). Errors use the OpenAI error body
``{"error": {"message", "type", "param", "code"}}`` — every error, including an unexpected one (a
catch-all turns it into a JSON 500, logged once in one line, with no traceback sent). Generation runs
on the scheduler's worker thread: by default continuous batching, where a request joins the running
batch at the next step and leaves it as soon as it is final (:mod:`dpad.serve.scheduler`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api import encode_prompt
from ..config import DecodeConfig
from ..errors import ConfigError, short_repr
from .metrics import Metrics
from .protocol import ApiError, ParsedRequest, parse, request_schema
from .scheduler import SCHEDULERS, Job, QueueFull, ShuttingDown, TextTracker, internal_error

DISCONNECT_POLL_S = 0.25
MAX_BODY_BYTES = 8 << 20  # default request body limit (413 beyond)
RETRY_AFTER_S = 1  # Retry-After of 429 (queue full) and 503 (shutting down) responses
ENCODE_TOKENIZERS = 2  # tokenizer copies that encode prompts (off the event loop), besides the decoding one
log = logging.getLogger("dpad.serve")


def default_model_id(path: str | Path | None) -> str:
    """``dpad-embedded``, a hub id as given (``ORG/NAME``) or the checkpoint directory's name."""
    from ..models import is_hub_id

    if path is None:
        return "dpad-embedded"
    if isinstance(path, str) and is_hub_id(path) and not Path(path).exists():
        return path
    return Path(path).resolve().name


class Server:
    """State shared by the endpoints: the model, its tokenizers, the scheduler.

    Prompts are encoded in worker threads (never on the event loop, so a long prompt cannot stall
    other requests' streams or ``/health``) on ``encode_tokenizers`` private copies of the
    tokenizer, one thread per copy at a time (fast tokenizers are not safe to share between
    threads); streamed text is decoded on the original behind ``tok_lock``. A prompt that takes
    long to tokenize (the body limit bounds it: a few seconds for 8 MiB) thus holds one copy only."""

    def __init__(self, lm, *, model_id: str, defaults: DecodeConfig, max_batch_size: int,  # noqa: ANN001
                 max_queue: int, batch_wait_ms: float, encode_tokenizers: int = ENCODE_TOKENIZERS,
                 scheduler: str = "continuous", max_batch_tokens: int | None = None) -> None:
        self.lm, self.model_id, self.defaults = lm, model_id, defaults
        self.created = int(time.time())
        self.metrics = Metrics()
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        opts: dict[str, Any] = ({"max_batch_tokens": max_batch_tokens} if scheduler == "continuous"
                                else {"batch_wait_ms": batch_wait_ms})
        self.scheduler = SCHEDULERS[scheduler](lm, max_batch_size=max_batch_size, max_queue=max_queue,
                                               metrics=self.metrics, **opts)
        self.tok_lock = threading.Lock()
        self.enc_tokenizers: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(max(1, encode_tokenizers)):
            self.enc_tokenizers.put(None if lm.tokenizer is None else copy.deepcopy(lm.tokenizer))
        self.metrics.add_gauge("dpad_queue_waiting", "Requests waiting for a batch.", lambda: self.scheduler.waiting)
        self.metrics.add_gauge("dpad_rows_running", "Rows of the batch being decoded.",
                               lambda: self.scheduler.running)

    # ------------------------------------------------------------------ tokens
    def encode(self, req: ParsedRequest) -> list[int]:
        """The prompt's ids, checked against the context; blocking (call it from a worker thread)."""
        tok = self.enc_tokenizers.get()
        try:
            return self._encode(req, tok)
        finally:
            self.enc_tokenizers.put(tok)

    def _encode(self, req: ParsedRequest, tok: Any) -> list[int]:
        lm = self.lm
        field = "prompt" if req.kind == "completion" else "messages"
        try:
            if req.kind == "completion":
                ids = encode_prompt(lm, req.prompt, req.chat_template, tokenizer=tok)
            else:
                if tok is None or not getattr(tok, "chat_template", None):
                    raise ApiError(400, "this model has no chat template: use /v1/completions", "messages")
                text = tok.apply_chat_template(req.prompt, add_generation_prompt=True, tokenize=False)
                ids = tok(text, add_special_tokens=False)["input_ids"]
        except ConfigError as e:
            raise ApiError(400, str(e), field) from e
        except (TypeError, ValueError, UnicodeError) as e:  # text the tokenizer or the template refuses
            raise ApiError(400, f"'{field}' could not be tokenized ({type(e).__name__}: "
                                f"{short_repr(str(e), 200)})", field) from e
        # an empty prompt (no ids) is allowed: unconditional generation, decoded in batches of its own
        if lm.mask_token_id in ids:
            raise ApiError(400, f"'{field}' contains the mask token (id {lm.mask_token_id})", field)
        max_len = lm.args.max_seq_len
        if len(ids) + req.cfg.gen_length > max_len:
            mt = "max_tokens"
            raise ApiError(400, f"This model's maximum context length is {max_len} tokens; the prompt has "
                                f"{len(ids)} tokens and max_tokens={req.max_tokens} (rounded up to "
                                f"gen_length={req.cfg.gen_length}, a multiple of block_length="
                                f"{req.cfg.block_length}) asks for {len(ids) + req.cfg.gen_length}",
                           mt, "context_length_exceeded")
        return ids

    def detok(self, ids: list[int]) -> str:
        tok = self.lm.tokenizer
        if tok is None:
            return " ".join(map(str, ids))
        with self.tok_lock:
            return tok.decode(ids, skip_special_tokens=True)

    def record(self, endpoint: str, status: int, t0: float) -> None:
        self.metrics.requests.inc(endpoint=endpoint, status=str(status))
        self.metrics.latency.observe(time.monotonic() - t0, endpoint=endpoint)


def _error(e: ApiError) -> Response:
    """The OpenAI error body as ASCII JSON (any text a client sent is escaped, lone surrogates too);
    429 and 503 carry ``Retry-After``."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if e.status in (429, 503) else None
    return Response(json.dumps(e.body(), ensure_ascii=True), status_code=e.status, headers=headers,
                    media_type="application/json")


_ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat_completions"}


class CatchAll:
    """ASGI middleware: an exception that escapes a route becomes a JSON 500 (OpenAI error body),
    logged once in one line; the client never sees a traceback or a plain-text error."""

    def __init__(self, app: Any, metrics: Metrics | None = None) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_)
        except Exception as e:  # noqa: BLE001 - the catch-all
            p = internal_error(e, f"{scope.get('method')} {short_repr(scope.get('path'), 60)} failed")
            if self.metrics is not None:  # counted like every other response (endpoint as the routes name it)
                path = str(scope.get("path", ""))
                endpoint = _ENDPOINTS.get(path, "other")
                self.metrics.requests.inc(endpoint=endpoint, status="500")
            if not started:
                await _error(ApiError.from_payload({**p, "message": "internal server error; the server log "
                                                    "has the details"}))(scope, receive, send)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


_ENDPOINT = {"completion": "completions", "chat": "chat_completions"}  # metrics label per request kind


def create_app(lm, *, model_id: str = "dpad-embedded", defaults: DecodeConfig | None = None,  # noqa: ANN001
               max_batch_size: int = 8, max_queue: int = 64, batch_wait_ms: float = 10.0,
               max_body_bytes: int = MAX_BODY_BYTES, scheduler: str = "continuous",
               max_batch_tokens: int | None = None) -> FastAPI:
    """The FastAPI app serving ``lm`` (a :class:`~dpad.models.LoadedModel`) as ``model_id``.

    ``scheduler``: ``continuous`` (rows join and leave the running batch between forwards, within
    ``max_batch_size`` rows; each step feeds at most ``max_batch_tokens`` tokens) or ``closed`` (batches of equal configs, formed
    within ``batch_wait_ms``; see :mod:`dpad.serve.scheduler`)."""
    srv = Server(lm, model_id=model_id, defaults=defaults or DecodeConfig(), max_batch_size=max_batch_size,
                 max_queue=max_queue, batch_wait_ms=batch_wait_ms, scheduler=scheduler,
                 max_batch_tokens=max_batch_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        srv.scheduler.start()
        try:
            yield
        finally:
            srv.scheduler.stop()

    app = FastAPI(title="dpad", description="OpenAI-compatible server for diffusion LMs", lifespan=lifespan)
    app.state.dpad = srv
    app.add_middleware(CatchAll, metrics=srv.metrics)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        srv.record("other", exc.status_code, time.monotonic())
        code = "not_found" if exc.status_code == 404 else None
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return _error(ApiError(exc.status_code, msg, None, code))

    _add_info_routes(app, srv)

    @app.post("/v1/completions", openapi_extra=request_schema("completion"))
    async def completions(request: Request) -> Response:
        return await _complete(srv, request, "completion", max_body_bytes)

    @app.post("/v1/chat/completions", openapi_extra=request_schema("chat"))
    async def chat_completions(request: Request) -> Response:
        return await _complete(srv, request, "chat", max_body_bytes)

    return app


def _add_info_routes(app: FastAPI, srv: Server) -> None:
    """``/health``, ``/metrics``, ``/v1/models`` and ``/v1/models/{model}``."""
    @app.get("/health")
    async def health() -> dict:
        srv.record("health", 200, time.monotonic())
        return {"status": "ok", "model": srv.model_id, "scheduler": srv.scheduler.kind, "waiting": srv.scheduler.waiting,
                "running": srv.scheduler.running, "max_batch_size": srv.scheduler.max_batch_size,
                "max_queue": srv.scheduler.max_queue}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        srv.record("metrics", 200, time.monotonic())
        return PlainTextResponse(srv.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        return {"id": srv.model_id, "object": "model", "created": srv.created, "owned_by": "dpad"}

    @app.get("/v1/models")
    async def models() -> dict:
        srv.record("models", 200, time.monotonic())
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> Response:
        if model != srv.model_id:
            srv.record("models", 404, time.monotonic())
            return _error(ApiError(404, f"The model {short_repr(model)} does not exist", "model", "model_not_found"))
        srv.record("models", 200, time.monotonic())
        return JSONResponse(model_card())


async def read_json(request: Request, max_body_bytes: int) -> Any:
    """The request body as JSON: 413 beyond ``max_body_bytes`` (announced or streamed), 400 for a
    body that is not JSON or is nested too deeply."""
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > max_body_bytes:
        raise ApiError(413, f"the request body has {n} bytes; at most {max_body_bytes}", None, "request_too_large")
    chunks, size = [], 0
    async for c in request.stream():
        size += len(c)
        if size > max_body_bytes:
            raise ApiError(413, f"the request body exceeds {max_body_bytes} bytes", None, "request_too_large")
        chunks.append(c)
    try:
        return json.loads(b"".join(chunks))
    except RecursionError as e:
        raise ApiError(400, "We could not parse the JSON body of your request: it is nested too deeply") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of > 4300 digits
        raise ApiError(400, f"We could not parse the JSON body of your request ({short_repr(str(e), 200)})") from e


async def _complete(srv: Server, request: Request, kind: str, max_body_bytes: int) -> Response:
    """One (chat) completion: read, validate and encode the request, queue it on the scheduler, then
    answer with one JSON body or a stream of server-sent events."""
    t0 = time.monotonic()
    endpoint = _ENDPOINT[kind]
    try:
        body = await read_json(request, max_body_bytes)
        req = parse(body, kind, model_id=srv.model_id, defaults=srv.defaults, max_len=srv.lm.args.max_seq_len)
        ids = await asyncio.to_thread(srv.encode, req)
    except ApiError as e:
        srv.record(endpoint, e.status, t0)
        return _error(e)
    call = _Call(srv, req, kind, t0, ids)
    try:
        srv.scheduler.submit(call.job)
    except ShuttingDown as e:
        srv.record(endpoint, 503, t0)
        return _error(ApiError(503, str(e), None, "server_shutting_down", "server_error"))
    except QueueFull as e:
        srv.record(endpoint, 429, t0)
        return _error(ApiError(429, str(e), None, "queue_full", "rate_limit_error"))
    if req.stream:
        return StreamingResponse(call.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await call.respond(request)


class _Call:
    """One queued request: its scheduler :class:`Job`, the events the worker thread sends back
    (``delta``, ``finish``, ``error``) and the response built from them, whole or streamed."""

    def __init__(self, srv: Server, req: ParsedRequest, kind: str, t0: float, ids: list[int]) -> None:
        self.srv, self.req, self.kind, self.t0 = srv, req, kind, t0
        self.endpoint = _ENDPOINT[kind]
        self.events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def sink(kind_: str, payload: Any) -> None:  # called on the scheduler's worker thread
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, (kind_, payload))
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        tracker = TextTracker(srv.detok, srv.lm.eos_token_id, req.max_tokens, req.stop)
        self.job = Job(ids, req.cfg, tracker, sink)
        self.rid = ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def cancel(self) -> None:
        """The client went away: the row leaves its batch, counted as cancelled."""
        self.job.cancel()
        self.srv.scheduler.withdraw(self.job)
        self.srv.metrics.cancelled.inc()

    def done(self, info: dict) -> None:
        m = self.srv.metrics
        m.prompt_tokens.inc(info["prompt_tokens"])
        m.generated_tokens.inc(info["completion_tokens"])
        m.nfe.inc(info["nfe"])

    async def respond(self, request: Request) -> Response:
        """Wait for the end of the decode (polling for a client that disconnects: 499, its row
        cancelled) and answer with the whole completion."""
        srv = self.srv
        try:
            while True:
                get = asyncio.ensure_future(self.events.get())
                while True:
                    finished, _ = await asyncio.wait({get}, timeout=DISCONNECT_POLL_S)
                    if finished:
                        break
                    if await request.is_disconnected():
                        get.cancel()
                        self.cancel()
                        srv.record(self.endpoint, 499, self.t0)
                        return Response(status_code=499)
                ev, payload = get.result()
                if ev == "error":
                    err = ApiError.from_payload(payload)
                    srv.record(self.endpoint, err.status, self.t0)
                    return _error(err)
                if ev == "finish":
                    break
        except asyncio.CancelledError:  # the server cancelled this request (shutdown): free its row
            self.job.cancel()
            srv.scheduler.withdraw(self.job)
            raise
        info = payload
        self.done(info)
        srv.record(self.endpoint, 200, self.t0)
        if self.kind == "completion":
            choice = {"text": info["text"], "index": 0, "logprobs": None, "finish_reason": info["finish_reason"]}
            obj = "text_completion"
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": info["text"]}, "logprobs": None,
                      "finish_reason": info["finish_reason"]}
            obj = "chat.completion"
        return JSONResponse({"id": self.rid, "object": obj, "created": self.created, "model": srv.model_id,
                             "choices": [choice], "usage": _usage(info), "dpad": _extras(info)})

    def _chunk(self, text: str | None, finish: str | None, role: bool = False) -> dict:
        obj = "text_completion" if self.kind == "completion" else "chat.completion.chunk"
        if self.kind == "completion":
            c: dict = {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}
        else:
            delta: dict = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.srv.model_id, "choices": [c]}

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events: each committed block's text as it comes, then the finish chunk (with
        usage if asked) and ``[DONE]``; an error event ends the stream with the error body. A client
        that leaves mid-stream cancels the row (499)."""
        srv, chat = self.srv, self.kind == "chat"
        complete = False
        first = True
        try:
            if chat:
                yield _sse(self._chunk("", None, role=True))
            while True:
                ev, payload = await self.events.get()
                if ev == "delta":
                    if first:
                        srv.metrics.first_chunk.observe(time.monotonic() - self.t0)
                        first = False
                    yield _sse(self._chunk(payload, None))
                elif ev == "finish":
                    self.done(payload)
                    yield _sse({**self._chunk(None if chat else "", payload["finish_reason"]),
                                "dpad": _extras(payload)})
                    if self.req.include_usage:
                        yield _sse({**self._chunk(None, None), "choices": [], "usage": _usage(payload)})
                    yield "data: [DONE]\n\n"
                    complete = True
                    srv.record(self.endpoint, 200, self.t0)
                    return
                else:
                    complete = True
                    err = ApiError.from_payload(payload)
                    srv.record(self.endpoint, err.status, self.t0)
                    yield _sse(err.body())
                    yield "data: [DONE]\n\n"
                    return
        finally:
            if not complete:  # the client went away mid-stream
                self.cancel()
                srv.record(self.endpoint, 499, self.t0)


def _usage(info: dict) -> dict:
    return {"prompt_tokens": info["prompt_tokens"], "completion_tokens": info["completion_tokens"],
            "total_tokens": info["prompt_tokens"] + info["completion_tokens"]}


def _extras(info: dict) -> dict:
    return {k: info[k] for k in ("nfe", "batch_size", "gen_length", "method")}


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one); ConfigError (one line) when that is
    impossible: the port is in use, the address is not this machine's, the host does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"--host {short_repr(host)} is not a valid address or host name ({e}); "
                          "use e.g. 127.0.0.1, 0.0.0.0 or ::1") from e
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        why = "the port is in use: pick another --port" if e.errno == 98 else \
            "the address is not one of this machine's: check --host" if e.errno == 99 else str(e)
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e} ({why})") from e
    return sock


def make_server(app: FastAPI, *, log_level: str = "info", shutdown_timeout: float = 10.0) -> Any:
    """A uvicorn server for ``app`` with a bounded graceful shutdown: on SIGTERM/SIGINT it stops
    accepting, lets in-flight requests finish for up to ``shutdown_timeout`` seconds, then cancels the
    rows still decoding (their clients get 503 ``server_shutting_down``; rows stop before their next
    forward) and exits; uvicorn cancels whatever is left one second later."""
    import uvicorn

    scheduler = app.state.dpad.scheduler

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            timer = asyncio.get_running_loop().call_later(shutdown_timeout, scheduler.cancel_all)
            try:
                await super().shutdown(sockets=sockets)
            finally:
                timer.cancel()

    return _Server(uvicorn.Config(app, log_level=log_level, lifespan="on",
                                  timeout_graceful_shutdown=shutdown_timeout + 1.0))


def run_server(app: FastAPI, sock: socket.socket, *, log_level: str = "info", shutdown_timeout: float = 10.0) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGTERM/SIGINT (see :func:`make_server`)."""
    make_server(app, log_level=log_level, shutdown_timeout=shutdown_timeout).run(sockets=[sock])


class ServerThread:
    """Run an app with uvicorn on a background thread (tests, load test); ``with`` yields the base URL.

    Binds ``host:port`` itself (port 0: a free port) before uvicorn starts, so there is no race."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 shutdown_timeout: float = 5.0) -> None:
        self.sock = bind_socket(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = make_server(app, log_level=log_level, shutdown_timeout=shutdown_timeout)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        t_end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > t_end:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
