"""``aghmn-serve`` (and ``aghmn-fast serve``, which delegates here): the HTTP/WebSocket server
(uvicorn with the connection limits of :mod:`.protocols`), or the same app on Ray Serve.

``aghmn-serve`` is the console script of ``aghmn-fast-runtime[serve]``, the torch-free install:
it serves a ``.aghmn`` model file; a checkpoint of ``aghmn-fast train`` needs ``aghmn-fast``
installed (the torch recognizer's plug-in, see :mod:`.recognizers`)."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from .sockets import bind_socket

TOKEN_ENV = "AGHMN_SERVE_TOKEN"
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130   # the exit codes of aghmn-fast's CLI


def add_parser(sub) -> None:
    """Add the ``serve`` subcommand to the CLI's subparsers (``aghmn-fast serve``)."""
    add_arguments(sub.add_parser("serve", help="serve a checkpoint over HTTP and WebSocket (see docs/SERVING.md)"))


def add_arguments(p) -> None:
    """The options of the server (``aghmn-serve`` and ``aghmn-fast serve`` take the same)."""
    p.add_argument("--checkpoint", required=True, action="append",
                   help="checkpoint written by aghmn-fast train, or a model file written by "
                        "aghmn-fast export (served on the native runtime, without torch); repeat "
                        "it to serve an ensemble of checkpoints of one window K (probabilities "
                        "averaged, N times the work)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--state", default="aghmn-serve-state.db",
                   help="durable conversation store: an SQLite file (default ./aghmn-serve-state.db), "
                        "a redis:// URL, or 'memory' (nothing survives a restart)")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token", default=None,
                       help=f"bearer token every route but /healthz and /readyz requires (visible in ps: "
                            f"prefer --token-file or ${TOKEN_ENV}; none of the three: an open server)")
    token.add_argument("--token-file", default=None,
                       help="file whose content (one trailing newline removed) is the bearer token")
    p.add_argument("--max-batch", type=int, default=256, help="most utterances per engine batch (default 256)")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="how long a batch may wait for more utterances under load (default 0: a "
                        "batch is whatever queued while the previous one ran)")
    p.add_argument("--max-queue", type=int, default=8192,
                   help="most utterances waiting; beyond it requests get 503 (default 8192)")
    p.add_argument("--max-conversations", type=int, default=20_000,
                   help="most stored conversations, and most held in memory; a new one beyond it gets "
                        "429 (default 20000)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory for live conversations, e.g. 512M, 2G (K, M, G: powers of 1024): at "
                        "most SIZE / (bytes per conversation) are held in memory (a model's K ring "
                        "slots plus 4 KiB of bookkeeping; e.g. 30 KiB at K = 40, H = 24, 28 MiB at "
                        "K = 4096, H = 256); beyond it the least recently used is evicted to the "
                        "store; the server refuses to start if one conversation exceeds it "
                        "(default: half the machine's memory, or of the container's limit)")
    p.add_argument("--ttl", type=float, default=3600.0,
                   help="seconds after which an idle conversation is forgotten (default 3600; 0 = never)")
    p.add_argument("--max-body-bytes", type=int, default=65_536,
                   help="largest request body or WebSocket message (default 65536)")
    p.add_argument("--max-text-chars", type=int, default=10_000,
                   help="longest utterance text in characters (default 10000)")
    p.add_argument("--max-batch-items", type=int, default=1024,
                   help="most utterances in one POST /v1/utterances (default 1024)")
    p.add_argument("--max-connections", type=int, default=None,
                   help="most open HTTP and WebSocket connections; one more gets 503 and is closed "
                        "(default 4096, or the file-descriptor limit minus 64 if lower)")
    p.add_argument("--max-header-bytes", type=int, default=16_384,
                   help="largest request line plus headers; 431 beyond (default 16384)")
    p.add_argument("--max-url-bytes", type=int, default=8192, help="longest URL; 414 beyond (default 8192)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds from a request's first byte to its last; 408 beyond (default 30)")
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="seconds a connection may stay open with no request in progress (default 60)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the engine (default 1)")
    p.add_argument("--backend", default=None, help="op backend (default: fastest available)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="storage precision of a checkpoint's weights and ring store (bf16: half the "
                        "state bytes, fp32 arithmetic; a .aghmn model carries its own)")
    p.add_argument("--projection-cache", default="on", choices=("on", "off"),
                   help="keep each stored utterance's fusion input projections in the ring store "
                        "(on, default) or recompute them at every push (off: the same answers bit "
                        "for bit, 1/7 of the bytes per conversation of a bidirectional-fusion "
                        "model, which --max-memory budgets, and slower pushes; see docs/SERVING.md)")
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
    """The :class:`~aghmn_runtime.serving.app.ServeConfig` of parsed arguments."""
    from .app import ServeConfig
    from .memory import parse_size

    for path in args.checkpoint:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
    # several checkpoints: StreamingRecognizer.from_checkpoint makes them an EnsembleRecognizer
    checkpoint = args.checkpoint[0] if len(args.checkpoint) == 1 else list(args.checkpoint)
    config = ServeConfig(
        checkpoint=checkpoint, host=args.host, port=args.port, state=args.state,
        token=token_from_args(args),
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_conversations=args.max_conversations, ttl_seconds=args.ttl or None,
        max_memory=None if args.max_memory is None else parse_size(args.max_memory),
        max_body_bytes=args.max_body_bytes, max_text_chars=args.max_text_chars,
        max_batch_items=args.max_batch_items, threads=args.threads, backend=args.backend,
        precision=args.precision, projection_cache=args.projection_cache == "on",
        worker_thread=args.worker_thread, max_connections=args.max_connections,
        max_header_bytes=args.max_header_bytes, max_url_bytes=args.max_url_bytes,
        request_timeout=args.request_timeout, idle_timeout=args.idle_timeout)
    config.validate()
    resolve_max_connections(config)
    return config


def token_from_args(args):
    """The bearer token: --token, else the content of --token-file, else $AGHMN_SERVE_TOKEN
    (set but empty is an error, like an empty --token: never an open server by accident);
    None: no token."""
    if args.token is not None:
        return args.token
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read()
        except UnicodeDecodeError:
            raise ValueError(f"--token-file {args.token_file} is not UTF-8 text") from None
        return token[:-1] if token.endswith("\n") else token
    return os.environ.get(TOKEN_ENV)


def resolve_max_connections(config) -> None:
    """Set ``config.max_connections`` when unset, and refuse one this process cannot open (it
    needs a file descriptor per connection, and some for the store, logs and the model)."""
    from .protocols import descriptor_limit

    spare = 64
    limit = descriptor_limit()
    if config.max_connections is None:
        config.max_connections = 4096 if limit is None else max(1, min(4096, limit - spare))
    elif limit is not None and config.max_connections > limit - spare:
        raise ValueError(f"--max-connections {config.max_connections} is more than this process can open: "
                         f"{limit} file descriptors (ulimit -n) minus {spare} for the store and logs")


def build_server(serving):
    """The uvicorn server of a :class:`~aghmn_runtime.serving.app.ServingApp`: httptools with the
    connection limits of :mod:`.protocols`, uvloop when installed (both halve the per-request
    cost of the pure-Python defaults); its shutdown drains WebSockets (``begin_drain``)."""
    import uvicorn

    from .protocols import ConnectionLimits, protocol_classes

    config = serving.config
    if config.max_connections is None:
        resolve_max_connections(config)
        serving.metrics.set_limits(config)
    extras = {}
    try:
        __import__("uvloop")
        extras["loop"] = "uvloop"
    except ImportError:
        pass
    refusals = serving.metrics.connection_refusals
    limits = ConnectionLimits(
        max_connections=config.max_connections, max_head_bytes=config.max_header_bytes,
        max_url_bytes=config.max_url_bytes, request_timeout=config.request_timeout,
        idle_timeout=config.idle_timeout, refused=lambda reason: refusals.labels(reason).inc())
    drain_seconds = 30
    http, ws = protocol_classes(limits, drain_seconds)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            serving.begin_drain()   # before uvicorn asks the connections to finish
            await super().shutdown(sockets)

    server = Server(uvicorn.Config(
        serving.app, lifespan="on", log_level="warning", access_log=False, http=http, ws=ws,
        ws_max_size=config.max_body_bytes, backlog=4096, timeout_graceful_shutdown=drain_seconds,
        timeout_keep_alive=config.idle_timeout, proxy_headers=False, **extras))
    serving.metrics.connections.set_function(lambda: len(server.server_state.connections))
    return server


def run_server(config, prog: str = "aghmn-fast serve") -> int:
    """Serve with uvicorn until SIGINT/SIGTERM (then drain and save); returns the exit code.
    ``prog`` names the command in the line that says where it listens."""
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
    print(f"{prog}: http://{config.host}:{port} ({serving.restored} conversation(s) "
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
    prog = getattr(args, "prog", None) or "aghmn-fast serve"
    if args.ray:
        from .ray_app import run_ray
        return run_ray(config, replicas=args.replicas, redis_url=args.redis, address=args.ray_address,
                       proxy=args.ray_proxy, prog=prog)
    if args.redis:
        raise ValueError("--redis is for --ray; for one server use --state redis://...")
    return run_server(config, prog)


COMMANDS = {"serve": run}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, like every other user error (argparse would print the whole usage first)
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``aghmn-serve``."""
    parser = _Parser(prog="aghmn-serve", description="Serve an exported .aghmn model (or, with "
                     "aghmn-fast installed, a checkpoint) over HTTP and WebSocket; see docs/SERVING.md.")
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def main(argv=None) -> int:
    """Entry point of the ``aghmn-serve`` console script; returns the exit code.

    Errors as ``aghmn-fast``'s CLI reports them: a bad command line, a bad option value, a
    missing or invalid file, a port in use or a missing optional dependency is one line
    ``aghmn-serve: error: ...`` and exit 2; Ctrl-C before serving is ``interrupted`` and 130;
    anything else is one ``internal error`` line and 1 (``--debug`` or ``AGHMN_DEBUG=1``: the
    traceback).
    """
    prog = "aghmn-serve"
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    args.prog = prog
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the CLI's boundary: one line, not a traceback
        if args.debug or os.environ.get("AGHMN_DEBUG", "") not in ("", "0"):
            raise
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        if isinstance(exc, (OSError, ValueError, ImportError)):
            if isinstance(exc, ImportError) and exc.name and exc.name.split(".")[0] in EXTRA_OF_MODULE:
                text += (f" (the [{EXTRA_OF_MODULE[exc.name.split('.')[0]]}] extra provides it: "
                         'pip install "aghmn-fast-runtime[serve]", and [ray] for --ray)')
            print(f"{prog}: error: {text}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{prog}: internal error: {type(exc).__name__}: {text} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return EXIT_FAILED


#: Top-level module of an optional dependency -> the extra of aghmn-fast-runtime that installs it.
EXTRA_OF_MODULE = {"starlette": "serve", "uvicorn": "serve", "websockets": "serve", "httptools": "serve",
                   "prometheus_client": "serve", "redis": "serve", "ray": "ray"}


if __name__ == "__main__":
    sys.exit(main())
