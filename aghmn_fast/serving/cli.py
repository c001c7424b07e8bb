"""``aghmn-fast serve``: the HTTP/WebSocket server (uvicorn), or the same app on Ray Serve."""
from __future__ import annotations

import errno
import os
import signal
import socket
import sys

TOKEN_ENV = "AGHMN_SERVE_TOKEN"


def add_parser(sub) -> None:
    """Add the ``serve`` subcommand to the CLI's subparsers."""
    p = sub.add_parser("serve", help="serve a checkpoint over HTTP and WebSocket (see docs/SERVING.md)")
    p.add_argument("--checkpoint", required=True, action="append",
                   help="checkpoint written by aghmn-fast train; repeat it to serve an ensemble of "
                        "checkpoints of one window K (probabilities averaged, N times the work)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--state", default="aghmn-serve-state.db",
                   help="durable conversation store: an SQLite file (default ./aghmn-serve-state.db), "
                        "a redis:// URL, or 'memory' (nothing survives a restart)")
    p.add_argument("--token", default=None,
                   help=f"bearer token every route but /healthz and /readyz requires "
                        f"(default: ${TOKEN_ENV}; none if unset)")
    p.add_argument("--max-batch", type=int, default=256, help="most utterances per engine batch (default 256)")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="how long a batch may wait for more utterances under load (default 0: a "
                        "batch is whatever queued while the previous one ran)")
    p.add_argument("--max-queue", type=int, default=8192,
                   help="most utterances waiting; beyond it requests get 503 (default 8192)")
    p.add_argument("--max-conversations", type=int, default=100_000,
                   help="most live conversations; a new one beyond it gets 429 (default 100000)")
    p.add_argument("--ttl", type=float, default=3600.0,
                   help="seconds after which an idle conversation is forgotten (default 3600; 0 = never)")
    p.add_argument("--max-body-bytes", type=int, default=65_536,
                   help="largest request body or WebSocket message (default 65536)")
    p.add_argument("--max-text-chars", type=int, default=10_000,
                   help="longest utterance text in characters (default 10000)")
    p.add_argument("--max-batch-items", type=int, default=1024,
                   help="most utterances in one POST /v1/utterances (default 1024)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the engine (default 1)")
    p.add_argument("--backend", default=None, help="op backend (default: fastest available)")
    p.add_argument("--worker-thread", action="store_true",
                   help="run the model on its own thread instead of the event loop (see docs/SERVING.md)")
    p.add_argument("--ray", action="store_true",
                   help="deploy on Ray Serve (needs --redis); runs until interrupted")
    p.add_argument("--replicas", type=int, default=2, help="Ray Serve replicas (default 2)")
    p.add_argument("--redis", default=None, help="Redis URL of the shared store in --ray mode")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: start a local one)")
    p.add_argument("--ray-proxy", default="haproxy", choices=["haproxy", "python"],
                   help="Ray Serve ingress: haproxy (default; balances on a hash of X-Session-Id) or "
                        "python (Ray's HTTP proxy with its consistent-hash router on X-Session-Id)")


def config_from_args(args):
    """The :class:`~aghmn_fast.serving.app.ServeConfig` of parsed arguments."""
    from .app import ServeConfig

    for path in args.checkpoint:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
    # several checkpoints: StreamingRecognizer.from_checkpoint makes them an EnsembleRecognizer
    checkpoint = args.checkpoint[0] if len(args.checkpoint) == 1 else list(args.checkpoint)
    config = ServeConfig(
        checkpoint=checkpoint, host=args.host, port=args.port, state=args.state,
        token=args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None),
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_conversations=args.max_conversations, ttl_seconds=args.ttl or None,
        max_body_bytes=args.max_body_bytes, max_text_chars=args.max_text_chars,
        max_batch_items=args.max_batch_items, threads=args.threads, backend=args.backend,
        worker_thread=args.worker_thread)
    config.validate()
    return config


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket; a port in use or a bad address is a ValueError naming them."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"--host {host!r} is not an address of this machine: {exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used: {exc.strerror}"
        raise ValueError(f"port {port} on {host} {why}") from None
    return sock


def build_server(serving):
    """The uvicorn server of a :class:`~aghmn_fast.serving.app.ServingApp` (uvloop and httptools
    when installed: they halve the per-request cost of the pure-Python defaults)."""
    import uvicorn

    extras = {}
    for module, option, value in (("uvloop", "loop", "uvloop"), ("httptools", "http", "httptools")):
        try:
            __import__(module)
            extras[option] = value
        except ImportError:
            pass
    return uvicorn.Server(uvicorn.Config(
        serving.app, lifespan="on", log_level="warning", access_log=False, ws="websockets-sansio",
        ws_max_size=serving.config.max_body_bytes, backlog=4096, timeout_graceful_shutdown=30,
        timeout_keep_alive=75, proxy_headers=False,
        **extras))


def run_server(config) -> int:
    """Serve with uvicorn until SIGINT/SIGTERM (then drain and save); returns the exit code."""
    from .app import ServingApp

    sock = bind_socket(config.host, config.port)
    try:
        serving = ServingApp(config)
    except BaseException:
        sock.close()
        raise
    server = build_server(serving)
    if config.worker_thread:
        # the engine thread must get the GIL back soon after each kernel call, not after the
        # default 5 ms the busy event-loop thread may keep it
        sys.setswitchinterval(float(os.environ.get("AGHMN_SWITCH_INTERVAL", "0.0002")))
    port = sock.getsockname()[1]
    print(f"aghmn-fast serve: http://{config.host}:{port} ({serving.restored} conversation(s) "
          f"restored from {config.state})", file=sys.stderr, flush=True)
    # uvicorn re-raises the signal that stopped it once it has drained; with these handlers in
    # place that re-raise is a no-op, so a clean shutdown exits 0 instead of dying by SIGTERM
    # (or printing a KeyboardInterrupt traceback for SIGINT).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    return 0


def run(args) -> int:
    """The ``serve`` command."""
    config = config_from_args(args)
    if args.ray:
        from .ray_app import run_ray
        return run_ray(config, replicas=args.replicas, redis_url=args.redis, address=args.ray_address,
                       proxy=args.ray_proxy)
    if args.redis:
        raise ValueError("--redis is for --ray; for one server use --state redis://...")
    return run_server(config)


COMMANDS = {"serve": run}
