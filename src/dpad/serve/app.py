"""The OpenAI-compatible HTTP server (FastAPI): completions, chat completions, streaming, metrics.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (OpenAI schema, SSE streaming
that sends each block's text as soon as the block is committed), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text format). Errors use the OpenAI error body
``{"error": {"message", "type", "param", "code"}}``. Generation runs on the :class:`Scheduler`'s
worker thread, which batches concurrent compatible requests.
"""

from __future__ import annotations

import asyncio
import json
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
from ..errors import ConfigError
from .metrics import Metrics
from .protocol import ApiError, ParsedRequest, parse
from .scheduler import Job, QueueFull, Scheduler, TextTracker

DISCONNECT_POLL_S = 0.25


def default_model_id(path: str | Path | None) -> str:
    """``dpad-embedded``, a hub id as given (``ORG/NAME``) or the checkpoint directory's name."""
    from ..models import is_hub_id

    if path is None:
        return "dpad-embedded"
    if isinstance(path, str) and is_hub_id(path) and not Path(path).exists():
        return path
    return Path(path).resolve().name


class Server:
    """State shared by the endpoints: the model, its tokenizer (behind a lock), the scheduler."""

    def __init__(self, lm, *, model_id: str, defaults: DecodeConfig, max_batch_size: int,  # noqa: ANN001
                 max_queue: int, batch_wait_ms: float) -> None:
        self.lm, self.model_id, self.defaults = lm, model_id, defaults
        self.created = int(time.time())
        self.metrics = Metrics()
        self.scheduler = Scheduler(lm, max_batch_size=max_batch_size, max_queue=max_queue,
                                   batch_wait_ms=batch_wait_ms, metrics=self.metrics)
        self.tok_lock = threading.Lock()
        self.metrics.add_gauge("dpad_queue_waiting", "Requests waiting for a batch.", lambda: self.scheduler.waiting)
        self.metrics.add_gauge("dpad_rows_running", "Rows of the batch being decoded.",
                               lambda: self.scheduler.running)

    # ------------------------------------------------------------------ tokens
    def encode(self, req: ParsedRequest) -> list[int]:
        lm = self.lm
        tok = lm.tokenizer
        field = "prompt" if req.kind == "completion" else "messages"
        try:
            with self.tok_lock:
                if req.kind == "completion":
                    ids = encode_prompt(lm, req.prompt, req.chat_template)
                else:
                    if tok is None or not getattr(tok, "chat_template", None):
                        raise ApiError(400, "this model has no chat template: use /v1/completions", "messages")
                    text = tok.apply_chat_template(req.prompt, add_generation_prompt=True, tokenize=False)
                    ids = tok(text, add_special_tokens=False)["input_ids"]
        except ConfigError as e:
            raise ApiError(400, str(e), field) from e
        if not ids:
            raise ApiError(400, f"'{field}' is empty after tokenization", field)
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


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def create_app(lm, *, model_id: str = "dpad-embedded", defaults: DecodeConfig | None = None,  # noqa: ANN001, C901
               max_batch_size: int = 8, max_queue: int = 64, batch_wait_ms: float = 10.0) -> FastAPI:
    """The FastAPI app serving ``lm`` (a :class:`~dpad.models.LoadedModel`) as ``model_id``."""
    srv = Server(lm, model_id=model_id, defaults=defaults or DecodeConfig(), max_batch_size=max_batch_size,
                 max_queue=max_queue, batch_wait_ms=batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        srv.scheduler.start()
        try:
            yield
        finally:
            srv.scheduler.stop()

    app = FastAPI(title="dpad", description="OpenAI-compatible server for diffusion LMs", lifespan=lifespan)
    app.state.dpad = srv

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        srv.record("other", exc.status_code, time.monotonic())
        code = "not_found" if exc.status_code == 404 else None
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return _error(ApiError(exc.status_code, msg, None, code))

    @app.get("/health")
    async def health() -> dict:
        srv.record("health", 200, time.monotonic())
        return {"status": "ok", "model": srv.model_id, "waiting": srv.scheduler.waiting,
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
            return _error(ApiError(404, f"The model '{model}' does not exist", "model", "model_not_found"))
        srv.record("models", 200, time.monotonic())
        return JSONResponse(model_card())

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, "chat")

    async def generate(request: Request, kind: str) -> Response:
        t0 = time.monotonic()
        endpoint = "completions" if kind == "completion" else "chat_completions"
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"We could not parse the JSON body of your request ({e})") from e
            req = parse(body, kind, model_id=srv.model_id, defaults=srv.defaults)
            ids = srv.encode(req)
        except ApiError as e:
            srv.record(endpoint, e.status, t0)
            return _error(e)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(kind_: str, payload: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind_, payload))
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        job = Job(ids, req.cfg, TextTracker(srv.detok, lm.eos_token_id, req.max_tokens, req.stop), sink)
        try:
            srv.scheduler.submit(job)
        except QueueFull as e:
            srv.record(endpoint, 429, t0)
            return _error(ApiError(429, str(e), None, "queue_full", "rate_limit_error"))
        rid = ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex
        created = int(time.time())

        def cancel() -> None:
            job.cancel()
            srv.scheduler.withdraw(job)
            srv.metrics.cancelled.inc()

        def done(info: dict) -> None:
            m = srv.metrics
            m.prompt_tokens.inc(info["prompt_tokens"])
            m.generated_tokens.inc(info["completion_tokens"])
            m.nfe.inc(info["nfe"])

        if req.stream:
            return StreamingResponse(_stream(req, kind, rid, created, events, t0, endpoint, cancel, done),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        while True:
            get = asyncio.ensure_future(events.get())
            while True:
                finished, _ = await asyncio.wait({get}, timeout=DISCONNECT_POLL_S)
                if finished:
                    break
                if await request.is_disconnected():
                    get.cancel()
                    cancel()
                    srv.record(endpoint, 499, t0)
                    return Response(status_code=499)
            ev, payload = get.result()
            if ev == "error":
                srv.record(endpoint, 500, t0)
                return _error(ApiError(500, payload, None, None, "server_error"))
            if ev == "finish":
                break
        info = payload
        done(info)
        srv.record(endpoint, 200, t0)
        usage = _usage(info)
        if kind == "completion":
            choice = {"text": info["text"], "index": 0, "logprobs": None, "finish_reason": info["finish_reason"]}
            obj = "text_completion"
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": info["text"]}, "logprobs": None,
                      "finish_reason": info["finish_reason"]}
            obj = "chat.completion"
        return JSONResponse({"id": rid, "object": obj, "created": created, "model": srv.model_id,
                             "choices": [choice], "usage": usage, "dpad": _extras(info)})

    async def _stream(req: ParsedRequest, kind: str, rid: str, created: int, events: asyncio.Queue, t0: float,
                      endpoint: str, cancel: Callable[[], None], done: Callable[[dict], None]) -> AsyncIterator[str]:
        obj = "text_completion" if kind == "completion" else "chat.completion.chunk"
        base = {"id": rid, "object": obj, "created": created, "model": srv.model_id}

        def chunk(text: str | None, finish: str | None, role: bool = False) -> dict:
            if kind == "completion":
                c: dict = {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}
            else:
                delta: dict = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [c]}

        complete = False
        first = True
        try:
            if kind == "chat":
                yield _sse(chunk("", None, role=True))
            while True:
                ev, payload = await events.get()
                if ev == "delta":
                    if first:
                        srv.metrics.first_chunk.observe(time.monotonic() - t0)
                        first = False
                    yield _sse(chunk(payload, None))
                elif ev == "finish":
                    done(payload)
                    yield _sse({**chunk(None if kind == "chat" else "", payload["finish_reason"]),
                                "dpad": _extras(payload)})
                    if req.include_usage:
                        yield _sse({**base, "choices": [], "usage": _usage(payload)})
                    yield "data: [DONE]\n\n"
                    complete = True
                    srv.record(endpoint, 200, t0)
                    return
                else:
                    complete = True
                    srv.record(endpoint, 500, t0)
                    yield _sse(ApiError(500, payload, None, None, "server_error").body())
                    yield "data: [DONE]\n\n"
                    return
        finally:
            if not complete:  # the client went away mid-stream
                cancel()
                srv.record(endpoint, 499, t0)

    return app


def _usage(info: dict) -> dict:
    return {"prompt_tokens": info["prompt_tokens"], "completion_tokens": info["completion_tokens"],
            "total_tokens": info["prompt_tokens"] + info["completion_tokens"]}


def _extras(info: dict) -> dict:
    return {k: info[k] for k in ("nfe", "batch_size", "gen_length", "method")}


class ServerThread:
    """Run an app with uvicorn on a background thread (tests, load test); ``with`` yields the base URL.

    Binds ``host:port`` itself (port 0: a free port) before uvicorn starts, so there is no race."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on",
                                                    timeout_graceful_shutdown=5))
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
