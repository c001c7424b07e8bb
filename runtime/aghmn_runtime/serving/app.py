"""The ASGI app of ``aghmn-fast serve`` (Starlette): routes, limits, token, metrics, lifecycle.

Routes (all answers are JSON; errors are ``{"error": message}`` with a 4xx/5xx status):

- ``POST /v1/conversations/{id}/utterances`` ``{"text": ...}``: the next utterance of a
  conversation (opened by its first utterance) -> ``{"id", "index", "label", "probabilities",
  "rebuilt", "latency_ms"}``; with ``"index": n`` (optional, everywhere) a retry is safe: the
  answer to the conversation's last utterance is given again instead of counting it twice, and
  an index out of sequence is refused with 409;
- ``POST /v1/utterances`` ``{"utterances": [{"id": ..., "text": ...}, ...]}``: many at once, in
  order -> ``{"predictions": [...]}`` (an item the engine refuses gets ``{"id", "error",
  "status"}`` in its place);
- ``DELETE /v1/conversations/{id}``: forget a conversation;
- ``WS /v1/stream``: JSON messages ``{"id", "text"}`` in (text or binary frames), exactly one
  prediction (or error) out per message, in order; messages may be pipelined; on drain the
  unprocessed ones are refused and the connection closes with 1012 (see :meth:`ServingApp.stream`);
- ``GET /healthz`` (the process is up), ``GET /readyz`` (model loaded, state restored, not
  draining), ``GET /metrics`` (Prometheus).

With a token (``--token``, ``--token-file`` or ``$AGHMN_SERVE_TOKEN``) every route except ``/healthz`` and
``/readyz`` requires ``Authorization: Bearer <token>`` (WebSocket clients that cannot set headers
may pass ``?token=``).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import time
from typing import List, Optional, Tuple

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from .batcher import MicroBatcher, Overloaded
from .engine import ConversationEngine, ServingError, check_conversation_id, check_index, check_text
from .memory import BOOKKEEPING_BYTES, default_budget, live_capacity
from .metrics import ServerMetrics
from .recognizers import load_recognizer
from .store import ConversationStore, MemoryStore, SQLiteStore

log = logging.getLogger("aghmn_runtime.serving")
#: storage precisions of a checkpoint served on torch (a .aghmn model carries its own)
PRECISIONS = ("fp32", "bf16")


def open_store(url: Optional[str], window: int, ttl_seconds: Optional[float] = None) -> ConversationStore:
    """The store named by ``url``: ``redis://...`` (Redis), ``memory`` (not durable), or a file
    path (SQLite). ``None`` means ``memory``."""
    if url is None or url == "memory":
        return MemoryStore(window)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisStore   # the redis package only when asked for
        return RedisStore(url, window, ttl_seconds=ttl_seconds)
    return SQLiteStore(url, window)


@dataclasses.dataclass
class ServeConfig:
    """Everything ``aghmn-fast serve`` can be told (the CLI options map one to one)."""
    checkpoint: str
    host: str = "127.0.0.1"
    port: int = 8000
    state: Optional[str] = "aghmn-serve-state.db"   # SQLite file, "memory", or a redis:// URL
    token: Optional[str] = None
    max_batch: int = 256
    max_wait_ms: float = 0.0
    max_queue: int = 8192
    max_conversations: int = 20_000
    max_memory: Optional[int] = None        # bytes for live conversations; None: half the machine's
    ttl_seconds: Optional[float] = 3600.0
    max_body_bytes: int = 65_536
    max_text_chars: int = 10_000
    max_batch_items: int = 1024
    threads: int = 1
    backend: Optional[str] = None
    precision: str = "fp32"                 # "bf16": StreamingRecognizer(precision="bf16")
    projection_cache: bool = True           # False: ring stores of reader vectors only (--projection-cache off)
    worker_thread: bool = False
    max_connections: Optional[int] = None   # None: 4096, or the descriptor limit - 64 if lower
    max_header_bytes: int = 16_384          # request line + headers
    max_url_bytes: int = 8192
    request_timeout: float = 30.0           # first byte of a request to its last
    idle_timeout: float = 60.0              # a connection with no request in progress

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range option."""
        if not isinstance(self.projection_cache, bool):
            raise ValueError(f"--projection-cache must be on or off, got {self.projection_cache!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        positive = ("max_batch", "max_queue", "max_conversations", "max_body_bytes", "max_text_chars",
                    "max_batch_items", "threads", "max_header_bytes", "max_url_bytes")
        for name in ("max_connections", "max_memory"):
            if getattr(self, name) is not None:
                positive += (name,)
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.ttl_seconds is not None and self.ttl_seconds <= 0:
            raise ValueError(f"--ttl must be > 0, got {self.ttl_seconds}")
        if self.token is not None:
            if not self.token:
                raise ValueError("the token is empty: give a non-empty --token, --token-file or "
                                 "$AGHMN_SERVE_TOKEN, or none of them for an open server")
            if self.token != self.token.strip() or any(ord(c) < 32 or ord(c) == 127 for c in self.token):
                raise ValueError("the token must not contain control characters or start or end with "
                                 "whitespace (it travels in an HTTP header)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in [0, 65535], got {self.port}")


class _Headers:
    """Case-insensitive lookup in raw ASGI headers (the few the fast path reads)."""
    __slots__ = ("_raw",)

    def __init__(self, raw):
        self._raw = raw

    def get(self, name: str, default=None):
        key = name.encode()
        for k, v in self._raw:
            if k.lower() == key:
                return v.decode("latin-1")
        return default


def _parse_json(data, what: str):
    """JSON of a body or message; ServingError(400) if it is not JSON or nested too deeply."""
    try:
        return json.loads(data)
    except ValueError as exc:   # also UnicodeDecodeError
        raise ServingError(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ServingError(400, f"{what} is JSON nested too deeply") from None


def _json(status: int, payload, headers=None) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False).encode(), status, headers,
                    media_type="application/json")


class ServingApp:
    """One model served over HTTP and WebSocket: builds the engine, batcher, metrics and routes.

    Construction loads the checkpoint, sizes the memory for live conversations (``max_memory``,
    see :mod:`.memory`: ValueError when one conversation alone exceeds it) and restores the stored
    conversations (so that a bad checkpoint, budget or state file fails before any port is
    opened); :attr:`app` is the ASGI app, whose lifespan starts the batcher and, on shutdown,
    finishes queued work and closes the store.

    Args:
        config: the options.
        store: a store to use instead of the one ``config.state`` names (tests, Ray).
    """

    def __init__(self, config: ServeConfig, store: Optional[ConversationStore] = None):
        config.validate()
        self.config = config
        recognizer = load_recognizer(config.checkpoint, backend=config.backend, threads=config.threads,
                                     precision=config.precision, projection_cache=config.projection_cache)
        self.memory_budget = config.max_memory if config.max_memory is not None else default_budget()
        self.bytes_per_conversation = recognizer.bytes_per_conversation + BOOKKEEPING_BYTES
        max_live = live_capacity(self.memory_budget, self.bytes_per_conversation, config.max_conversations,
                                 str(config.checkpoint))
        self.metrics = ServerMetrics()
        if store is None:
            store = open_store(config.state, recognizer.window, config.ttl_seconds)
        self.engine = ConversationEngine(recognizer, store, max_conversations=config.max_conversations,
                                         ttl_seconds=config.ttl_seconds, stats=self.metrics, max_live=max_live)
        try:
            self.restored = self.engine.restore()
        except Exception:
            store.close()
            raise
        self.batcher = MicroBatcher(self.engine.process, max_batch=config.max_batch,
                                    max_wait_ms=config.max_wait_ms, max_queue=config.max_queue,
                                    on_batch=self.metrics.on_batch, worker_thread=config.worker_thread)
        self.metrics.live.set_function(lambda: self.engine.live)
        self.metrics.state_bytes.set_function(lambda: recognizer.store_bytes)
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.ready = False
        self._sweeper: Optional[asyncio.Task] = None
        self._expected_auth = f"Bearer {config.token}".encode("utf-8") if config.token is not None else None
        self.draining = False   # SIGTERM/SIGINT arrived: WebSocket messages are refused from now
        self.metrics.set_limits(config)
        self.metrics.limits.labels("max_memory").set(self.memory_budget)
        self.metrics.limits.labels("max_live_conversations").set(self.engine.memory_cap)
        self._observe = {r: (self.metrics.request_seconds.labels(r), {}) for r in
                         ("utterance", "batch", "delete", "stream", "metrics")}
        self._in_flight = {r: self.metrics.in_flight.labels(r) for r in ("utterance", "batch", "stream")}
        self._receiving = {r: self.metrics.receiving.labels(r) for r in ("utterance", "batch")}
        self.app = self   # the ASGI app (see __call__)
        self._starlette = Starlette(
            routes=[
                Route("/v1/utterances", self.post_batch, methods=["POST"]),
                Route("/v1/conversations/{cid}", self.delete_conversation, methods=["DELETE"]),
                WebSocketRoute("/v1/stream", self.stream),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.render_metrics, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_exception, Exception: self._internal_error},
            lifespan=self._lifespan)

    # ---- lifecycle -----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.batcher.start()
        if self.config.ttl_seconds is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self.ready = True
        log.info("serving %s: %d conversation(s) restored", self.config.checkpoint, self.restored)
        try:
            yield
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop taking work, finish what is queued, close the store (idempotent)."""
        self.ready = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.batcher is not None:
            batcher, self.batcher = self.batcher, None
            await batcher.stop()
            self.engine.close()

    async def _sweep(self) -> None:
        interval = min(30.0, max(0.05, self.config.ttl_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                n = await self.batcher.call(self.engine.expire)
                if n:
                    log.info("expired %d idle conversation(s)", n)
            except Overloaded:
                return
            except Exception:   # a store hiccup must not end expiry for good
                log.exception("expiry sweep failed")

    # ---- helpers -------------------------------------------------------------------------------
    def _authorize(self, headers, query_token: Optional[str] = None) -> None:
        if self._expected_auth is None:
            return
        # compared as bytes: the header's raw bytes (ASGI gives them as latin-1) against the
        # token's UTF-8, so that a non-ASCII token works over HTTP and WebSocket alike
        given = headers.get("authorization")
        if given is not None:
            raw = given.encode("latin-1")
        elif query_token is not None:
            raw = b"Bearer " + query_token.encode("utf-8", "replace")
        else:
            raise ServingError(401, "missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(raw, self._expected_auth):
            raise ServingError(401, "invalid bearer token")

    async def _json_body(self, route: str, request: Request):
        return await self._read_json(route, request.headers.get("content-length"), request.stream())

    async def _read_json(self, route: str, declared: Optional[str], chunks):
        """Parse a JSON body of at most ``max_body_bytes`` (checked before and while reading)."""
        limit = self.config.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ServingError(413, f"request body larger than {limit} bytes")
        parts, size = [], 0
        receiving = self._receiving[route]
        receiving.inc()
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise ServingError(413, f"request body larger than {limit} bytes")
                parts.append(chunk)
        finally:
            receiving.dec()
        return _parse_json(b"".join(parts), "body")

    async def _submit(self, route: str, items: List[Tuple[str, str]], tag=None):
        if self.batcher is None or not self.ready:
            raise ServingError(503, "the server is shutting down")
        in_flight = self._in_flight[route]
        in_flight.inc()
        try:
            return await self.batcher.submit(items, tag)
        except Overloaded as exc:
            raise ServingError(503, f"overloaded: {exc}") from None
        finally:
            in_flight.dec()

    def _error(self, route: str, err: ServingError, start: float) -> Response:
        reason = {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict",
                  413: "too_large", 422: "invalid", 429: "capacity", 500: "internal", 503: "unavailable"}
        self.metrics.rejections.labels(reason.get(err.status, str(err.status))).inc()
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else (
            {"Retry-After": "1"} if err.status in (429, 503) else None)
        return self._done(route, _json(err.status, {"error": err.message}, headers), start)

    def _done(self, route: str, response: Response, start: float) -> Response:
        self._count(route, response.status_code, start)
        return response

    def _count(self, route: str, status: int, start: float) -> None:
        histogram, counters = self._observe[route]
        histogram.observe(time.perf_counter() - start)
        counter = counters.get(status)
        if counter is None:
            counter = counters[status] = self.metrics.requests.labels(route, str(status))
        counter.inc()

    async def _http_exception(self, request, exc: HTTPException) -> Response:
        return self._route_error(exc.status_code, request.method, request.url.path, exc.headers, exc.detail)

    def _route_error(self, status: int, method: str, path: str, headers=None, detail: str = "") -> Response:
        """404 (no route) or 405 (wrong method) as JSON, counted among the rejections."""
        message = {404: f"no route {path}", 405: f"method {method} not allowed on {path}"}
        self.metrics.rejections.labels("no_route" if status == 404 else "method").inc()
        return _json(status, {"error": message.get(status, detail)}, headers)

    async def _internal_error(self, request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        self.metrics.rejections.labels("internal").inc()
        return _json(500, {"error": f"internal error: {type(exc).__name__}"})

    # ---- routes --------------------------------------------------------------------------------
    async def _utterance(self, headers, cid: str, declared: Optional[str], chunks):
        """The utterance route: (status, JSON bytes, extra headers)."""
        start = time.perf_counter()
        try:
            self._authorize(headers)
            cid = check_conversation_id(cid)
            body = await self._read_json("utterance", declared, chunks)
            if not isinstance(body, dict) or "text" not in body:
                raise ServingError(422, "body must be a JSON object with a 'text' string")
            text = check_text(body["text"], self.config.max_text_chars)
            index = check_index(body.get("index"))
            result = (await self._submit("utterance", [(cid, text, index)]))[0]
            if isinstance(result, ServingError):
                raise result
        except ServingError as err:
            response = self._error("utterance", err, start)
            return response.status_code, response.body, {k: v for k, v in response.headers.items()
                                                          if k in ("www-authenticate", "retry-after")}
        result["latency_ms"] = round((time.perf_counter() - start) * 1e3, 4)
        self._count("utterance", 200, start)
        return 200, json.dumps(result, ensure_ascii=False).encode(), None

    async def __call__(self, scope, receive, send) -> None:
        """The ASGI entry point: the hot route (``POST /v1/conversations/{id}/utterances``) is
        served here directly, and only here (Starlette's routing and middleware cost about as
        much as the model at batch size 1); the other routes by Starlette."""
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith("/v1/conversations/") and path.endswith("/utterances") and path.count("/") == 4:
                if scope["method"] == "POST":   # an empty id too: refused by check_conversation_id
                    await self._fast_utterance(scope, receive, send, path[18:-11])
                    return
                if path[18:-11]:
                    await self._route_error(405, scope["method"], path, {"Allow": "POST"})(scope, receive, send)
                    return
        await self._starlette(scope, receive, send)

    async def _fast_utterance(self, scope, receive, send, cid: str) -> None:
        headers = _Headers(scope["headers"])

        async def chunks():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ServingError(400, "client disconnected")
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        try:
            status, payload, extra = await self._utterance(headers, cid, headers.get("content-length"), chunks())
        except Exception as exc:   # the engine failed: a JSON 500, like every other route
            log.error("internal error on POST %s", scope["path"], exc_info=exc)
            self.metrics.rejections.labels("internal").inc()
            status, payload, extra = 500, json.dumps({"error": f"internal error: {type(exc).__name__}"}).encode(), None
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if extra:
            raw += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    async def post_batch(self, request: Request) -> Response:
        """``POST /v1/utterances`` ``{"utterances": [{"id": ..., "text": ...}, ...]}``."""
        start = time.perf_counter()
        try:
            self._authorize(request.headers)
            body = await self._json_body("batch", request)
            entries = body.get("utterances") if isinstance(body, dict) else None
            if not isinstance(entries, list) or not entries:
                raise ServingError(422, "body must be {\"utterances\": [{\"id\": ..., \"text\": ...}, ...]}")
            if len(entries) > self.config.max_batch_items:
                raise ServingError(413, f"more than {self.config.max_batch_items} utterances in one request")
            items = []
            for n, entry in enumerate(entries):
                try:
                    if not isinstance(entry, dict):
                        raise ServingError(422, "must be an object with 'id' and 'text'")
                    items.append((check_conversation_id(entry.get("id")),
                                  check_text(entry.get("text"), self.config.max_text_chars),
                                  check_index(entry.get("index"))))
                except ServingError as err:
                    raise ServingError(err.status, f"utterances[{n}]: {err.message}") from None
            results = await self._submit("batch", items)
        except ServingError as err:
            return self._error("batch", err, start)
        out = [{"id": item[0], "error": r.message, "status": r.status} if isinstance(r, ServingError) else r
               for item, r in zip(items, results)]
        return self._done("batch", _json(200, {"predictions": out, "latency_ms": round(
            (time.perf_counter() - start) * 1e3, 4)}), start)

    async def delete_conversation(self, request: Request) -> Response:
        """``DELETE /v1/conversations/{id}``: 200 if it existed, else 404."""
        start = time.perf_counter()
        try:
            self._authorize(request.headers)
            cid = check_conversation_id(request.path_params["cid"])
            if self.batcher is None:
                raise ServingError(503, "the server is shutting down")
            try:
                existed = await self.batcher.call(lambda: self.engine.delete(cid))
            except Overloaded as exc:
                raise ServingError(503, str(exc)) from None
            if not existed:
                raise ServingError(404, f"no conversation {cid}")
        except ServingError as err:
            return self._error("delete", err, start)
        return self._done("delete", _json(200, {"id": cid, "deleted": True}), start)

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: the process answers (no token needed)."""
        return _json(200, {"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """``GET /readyz``: 200 when accepting work, 503 while starting or draining."""
        if not self.ready:
            return _json(503, {"status": "not ready"})
        return _json(200, {"status": "ready", "pid": os.getpid(), "live_conversations": self.engine.live,
                           "max_live_conversations": self.engine.memory_cap,
                           "stored_conversations": self.engine.store.count(),
                           "queue_depth": self.batcher.depth if self.batcher else 0})

    async def render_metrics(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text format."""
        start = time.perf_counter()
        try:
            self._authorize(request.headers)
        except ServingError as err:
            return self._error("metrics", err, start)
        return self._done("metrics", Response(self.metrics.render(), 200,
                                              media_type=self.metrics.content_type), start)

    def begin_drain(self) -> None:
        """Shutdown started (SIGTERM/SIGINT): WebSocket messages not yet processed are refused
        from now on (their clients are told, and can send them again elsewhere); HTTP requests
        already received are still answered."""
        self.draining = True
        if self.batcher is not None:
            self.batcher.withdraw(lambda tag: isinstance(tag, _StreamConnection), _NOT_PROCESSED)

    async def stream(self, websocket: WebSocket) -> None:
        """``WS /v1/stream``: ``{"id", "text"}`` messages (text or binary frames of UTF-8 JSON)
        in, exactly one answer out per message, in order: a prediction or an error.

        A message is processed only if its answer can still be sent: when the client leaves,
        its messages still queued are withdrawn; when the server drains, they are answered
        ``503`` (not processed), the ones processed are answered, then the server closes with
        1012."""
        try:
            self._authorize(websocket.headers, websocket.query_params.get("token"))
        except ServingError as err:
            self.metrics.rejections.labels("unauthorized").inc()
            await websocket.close(code=1008, reason=err.message)
            return
        await websocket.accept()
        connection = _StreamConnection()
        # at most 1,024 answers outstanding per connection: a client that never reads stalls
        # itself, not the server
        answers: asyncio.Queue = asyncio.Queue(maxsize=1024)
        writer = asyncio.get_running_loop().create_task(self._stream_writer(websocket, answers))
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await answers.put(asyncio.ensure_future(self._stream_one(message, connection)))
        finally:
            connection.open = False
            if self.batcher is not None:
                self.batcher.withdraw(lambda tag: tag is connection, _NOT_PROCESSED)
            await answers.put(None)
            with contextlib.suppress(Exception):
                await writer
            if self.draining:
                with contextlib.suppress(Exception):
                    await websocket.close(code=1012, reason="the server is shutting down")

    async def _stream_one(self, message: dict, connection: "_StreamConnection") -> dict:
        start = time.perf_counter()
        cid = None   # echoed in an error only once it is a valid id
        try:
            if self.draining or not connection.open:
                raise ServingError(503, _NOT_PROCESSED)
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            # the single server's uvicorn closes a bigger message with 1009 before it is read;
            # this answers it where the WebSocket layer allows more (Ray Serve's proxy)
            size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
            if size > self.config.max_body_bytes:
                raise ServingError(413, f"message larger than {self.config.max_body_bytes} bytes")
            body = _parse_json(data, "message")
            if not isinstance(body, dict):
                raise ServingError(422, "message must be an object with 'id' and 'text'")
            cid = check_conversation_id(body.get("id"))
            text = check_text(body.get("text"), self.config.max_text_chars)
            index = check_index(body.get("index"))
            result = (await self._submit("stream", [(cid, text, index)], tag=connection))[0]
            if isinstance(result, ServingError):
                raise result
        except ServingError as err:
            self._error("stream", err, start)
            return {"id": cid, "error": err.message, "status": err.status}
        result["latency_ms"] = round((time.perf_counter() - start) * 1e3, 4)
        self._done("stream", Response(status_code=200), start)
        return result

    async def _stream_writer(self, websocket: WebSocket, answers: asyncio.Queue) -> None:
        gone = False
        while True:
            pending = await answers.get()
            if pending is None:
                return
            if gone:   # keep the reader unblocked until it sees the disconnect; process nothing
                pending.cancel()
                continue
            try:
                payload = await pending
            except Exception as exc:   # an engine failure: tell the client, keep the connection
                log.exception("stream request failed")
                payload = {"error": f"internal error: {type(exc).__name__}", "status": 500}
            try:
                await websocket.send_text(json.dumps(payload, ensure_ascii=False))
            except Exception:
                gone = True   # the client left; its queued messages are withdrawn by stream()


_NOT_PROCESSED = "the server is shutting down; this message was not processed"


class _StreamConnection:
    """One WebSocket connection: the tag of its queued messages (see MicroBatcher.withdraw)."""
    __slots__ = ("open",)

    def __init__(self):
        self.open = True
