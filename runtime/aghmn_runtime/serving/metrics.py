"""Prometheus metrics of one server (its own registry, so that several apps can live in a process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """The metrics ``/metrics`` exposes (names start with ``aghmn_``; see docs/SERVING.md)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.request_seconds = Histogram("aghmn_request_seconds", "Request latency in the server, by route",
                                         ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter("aghmn_requests", "Requests answered, by route and HTTP status",
                                ["route", "status"], registry=r)
        self.rejections = Counter("aghmn_rejections", "Requests refused, by reason", ["reason"], registry=r)
        self.batch_size = Histogram("aghmn_batch_size", "Utterances per engine batch",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("aghmn_batch_seconds", "Engine time per batch",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.utterances = Counter("aghmn_utterances", "Utterances classified", registry=r)
        self.conversations = Counter(
            "aghmn_conversation_lookups",
            "Conversations per batch by where their state came from: memory (hit), store (rebuilt), new",
            ["source"], registry=r)
        self.live = Gauge("aghmn_live_conversations", "Conversations held in memory", registry=r)
        self.state_bytes = Gauge("aghmn_state_bytes", "Bytes the recognizer's ring store holds for "
                                 "conversations (its capacity, open or not)", registry=r)
        self.in_flight = Gauge("aghmn_in_flight_requests", "Requests waiting for the engine, by route",
                               ["route"], registry=r)
        self.receiving = Gauge("aghmn_receiving_requests", "Requests whose body is being received, by route",
                               ["route"], registry=r)
        self.queue_depth = Gauge("aghmn_queue_depth", "Utterances waiting for the engine", registry=r)
        self._sources = [self.conversations.labels(s) for s in ("hit", "rebuilt", "new")]
        self.limits = Gauge("aghmn_limit", "The server's configured limits (seconds, bytes or counts)",
                            ["limit"], registry=r)
        self.connections = Gauge("aghmn_open_connections", "Open HTTP and WebSocket connections", registry=r)
        self.connection_refusals = Counter(
            "aghmn_connections_closed", "Connections refused or closed by a limit, by reason "
            "(max_connections, header_too_large, url_too_long, request_timeout, idle_timeout)",
            ["reason"], registry=r)

    def set_limits(self, config) -> None:
        """Expose the limits of a ServeConfig (those that are set) as ``aghmn_limit{limit=...}``."""
        for name in ("max_connections", "max_header_bytes", "max_url_bytes", "request_timeout", "idle_timeout",
                     "max_body_bytes", "max_text_chars", "max_batch_items", "max_queue", "max_conversations",
                     "ttl_seconds"):
            value = getattr(config, name)
            if value is not None:
                self.limits.labels(name).set(value)

    def record(self, hits: int, rebuilds: int, new: int) -> None:
        """Engine callback: where the conversations of one batch came from."""
        for counter, n in zip(self._sources, (hits, rebuilds, new)):
            if n:
                counter.inc(n)

    def on_batch(self, size: int, seconds: float) -> None:
        """Batcher callback: one engine batch done."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.utterances.inc(size)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
