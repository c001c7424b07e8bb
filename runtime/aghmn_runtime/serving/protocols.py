"""Connection-level defences of ``aghmn-fast serve``: uvicorn's httptools and WebSocket protocols
with limits on what one connection may cost before the app sees a request.

- **Connections**: at most ``max_connections`` open (HTTP and WebSocket together); one more is
  answered ``503`` and closed at once, so the process never runs out of file descriptors.
- **Request head**: the request line and headers are counted as their bytes arrive (at most one
  read, 256 KiB, is buffered beyond the limit): a URL over ``max_url_bytes`` gets ``414``, a head
  over ``max_head_bytes`` gets ``431``; both close the connection.
- **Time**: a connection with no request in progress is closed after ``idle_timeout`` seconds
  (also before its first byte); a request whose head and body have not fully arrived
  ``request_timeout`` seconds after its first byte gets ``408`` (or, if the app is already
  reading its body, the app sees the client disconnect) and the connection is closed.
- **Drain** (WebSocket): uvicorn closes every WebSocket with 1012 the moment shutdown starts, so
  answers to messages already processed would be lost. Here shutdown only tells the app
  (``websocket.disconnect`` with 1012); the app refuses what it has not processed, answers what
  it has, then closes with 1012 itself (see ``ServingApp.stream``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

# The subclasses below rely on private parts of uvicorn, which may change in any release; the
# ``serve`` extra therefore caps uvicorn below the next minor version (runtime/pyproject.toml),
# and tests/test_serving_hostile.py checks every name listed here on the installed uvicorn, so
# that raising the cap fails a test, not a server. What the classes override or call:
PRIVATE_METHODS = {
    HttpToolsProtocol: ("connection_made", "connection_lost", "data_received", "on_message_begin", "on_url",
                        "on_header", "on_headers_complete", "on_message_complete", "send_400_response",
                        "handle_websocket_upgrade", "timeout_keep_alive_handler"),
    WebSocketsSansIOProtocol: ("shutdown", "stop_keepalive"),
}
# ... and the attributes they read or set, as a new instance has them:
PRIVATE_ATTRIBUTES = {
    HttpToolsProtocol: ("loop", "connections", "timeout_keep_alive", "timeout_keep_alive_task", "cycle"),
    WebSocketsSansIOProtocol: ("loop", "queue", "handshake_complete", "close_sent", "initial_response",
                               "close_timer"),
}
# ... and the status lines written by GuardedHttpProtocol._answer.
ANSWERED_STATUSES = (408, 414, 431, 503)


@dataclasses.dataclass
class ConnectionLimits:
    """What one connection may cost (see the module doc); ``refused(reason)`` counts refusals."""
    max_connections: int
    max_head_bytes: int
    max_url_bytes: int
    request_timeout: float
    idle_timeout: float
    refused: Callable[[str], None] = lambda reason: None


class _Refuse(Exception):
    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ConnectionLimits`."""

    def __init__(self, *args, limits: ConnectionLimits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.timeout_keep_alive = limits.idle_timeout
        self._refused = False         # answered by a limit: the parser is not fed any more
        self._over_limit = False      # refused at connect: never counted among the connections
        self._in_head = True          # the next bytes belong to a request line or headers
        self._head_bytes = 0
        self._url_done = False
        self._request_timer = None
        self._refusal: Optional[_Refuse] = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._over_limit = True
            self.transport = transport
            self._answer(503, "too many open connections", "max_connections")
            return
        super().connection_made(transport)
        # uvicorn starts the idle timer only after a first response: a connection that never
        # sends a byte must time out too
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        if self._over_limit:
            return
        self._cancel_request_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)   # may include a body: judged after parsing, below
        super().data_received(data)
        # still in the head: it (and what the parser buffered of it) is over the limit by at
        # most one read (at most 256 KiB)
        if self._in_head and self._head_bytes > self.limits.max_head_bytes and not self._refused:
            self._refuse_head()

    def _refuse_head(self) -> None:
        if self._url_done:
            self._answer(431, f"request headers larger than {self.limits.max_head_bytes} bytes", "header_too_large")
        else:
            self._answer(414, f"URL longer than {self.limits.max_url_bytes} bytes", "url_too_long")

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_done = False
        self._cancel_request_timer()
        self._request_timer = self.loop.call_later(self.limits.request_timeout, self._request_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            # stops the parser; httptools wraps it in a parser error, answered by send_400_response
            self._refusal = _Refuse(414, f"URL longer than {self.limits.max_url_bytes} bytes", "url_too_long")
            raise self._refusal

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._answer(self._refusal.status, self._refusal.message, self._refusal.reason)
        else:
            super().send_400_response(msg)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._url_done = True
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._url_done = True
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_request_timer()
        self._in_head = True
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._cancel_request_timer()   # the request is complete; the connection is no longer ours
        super().handle_websocket_upgrade()

    # timers
    def _cancel_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self._in_head or not self.cycle.response_started:
            self._answer(408, f"request not received within {self.limits.request_timeout:g} s", "request_timeout")
        else:
            self.limits.refused("request_timeout")
            self.transport.close()

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.limits.refused("idle_timeout")
        super().timeout_keep_alive_handler()

    def _answer(self, status: int, message: str, reason: str) -> None:
        """A plain-text error and close (the app never sees this request)."""
        self._refused = True
        self._cancel_request_timer()
        self.limits.refused(reason)
        body = message.encode()
        self.transport.write(b"".join([
            STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body]))
        self.transport.close()


class DrainingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol whose shutdown lets the app answer before it closes."""

    def __init__(self, *args, close_after: float = 30.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._close_after = close_after

    def shutdown(self) -> None:
        if self.close_sent or not self.handshake_complete or self.initial_response is not None:
            super().shutdown()
            return
        self.stop_keepalive()
        # the app refuses unprocessed messages, answers processed ones, then closes with 1012;
        # the transport goes at the latest when the graceful shutdown would give up anyway
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1012})
        self.close_timer = self.loop.call_later(self._close_after, self.transport.close)


def protocol_classes(limits: ConnectionLimits, drain_seconds: float):
    """(HTTP protocol factory, WebSocket protocol factory) for ``uvicorn.Config(http=, ws=)``."""
    return (functools.partial(GuardedHttpProtocol, limits=limits),
            functools.partial(DrainingWebSocketProtocol, close_after=drain_seconds))


def descriptor_limit() -> Optional[int]:
    """This process's file-descriptor limit, raised to the hard limit first (None: unknown)."""
    try:
        import resource
    except ImportError:   # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return None if soft == resource.RLIM_INFINITY else soft
