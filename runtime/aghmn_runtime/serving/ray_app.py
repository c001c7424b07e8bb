"""The serving app on Ray Serve: N replicas of :class:`~aghmn_runtime.serving.app.ServingApp`, one
Redis store shared by all of them, and conversation-affine routing.

Routing: clients put the conversation id in the ``X-Session-Id`` header, and requests are
routed on it, so every request of a conversation reaches the replica that holds it in memory
while that replica is alive. Two ingress choices (``proxy``): ``"haproxy"`` (default) is Ray
Serve's HAProxy ingress balancing on a hash of that header (``balance hdr(x-session-id)``),
about 7x faster per request than ``"python"``, Ray's Python HTTP proxy with its consistent-hash
request router on the same header. Requests
without the header, or that land elsewhere after a replica died, are still answered exactly: the
replica rebuilds the conversation from its last K texts in Redis (and a stale in-memory copy is
detected by comparing counts with Redis). ``aghmn_conversation_lookups_total{source=...}`` counts
memory hits and rebuilds per replica; responses carry ``"rebuilt": true`` when a rebuild happened.

Use ``aghmn-serve --ray`` (or ``aghmn-fast serve --ray`` --redis redis://HOST:PORT ...`` or, from Python,
``serve.run(build_app(config, replicas, redis_url), route_prefix="/")``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import sys
import threading
import time
from typing import Optional

ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
SESSION_HEADER = "X-Session-Id"


class AGHMNReplica:
    """One Ray Serve replica: a ServingApp whose store is the shared Redis."""

    def __init__(self, config: dict):
        from .app import ServeConfig, ServingApp
        _nodelay_on_default_protocol_sockets()
        self.serving = ServingApp(ServeConfig(**config))

    def __serve_build_asgi_app__(self):
        """Ray Serve's hook for an ASGI app built in the replica (it runs the app's lifespan)."""
        return self.serving.app


def _nodelay_on_default_protocol_sockets() -> None:
    """Make asyncio set TCP_NODELAY on the replica's ingress connections too.

    asyncio sets it only on sockets whose ``proto`` is ``IPPROTO_TCP``; Serve creates the
    replica's listening socket with the default ``proto`` 0, so its accepted connections kept
    Nagle's algorithm, and uvicorn's two writes per response (head, then body) waited for the
    proxy's delayed ACK: a lone request took 44 ms instead of about 1 ms. (uvloop sets it on
    every TCP connection, which is why this showed only on asyncio's loop, RAY_ENV_DEFAULTS.)
    """
    import asyncio.base_events as base_events
    import socket

    original = getattr(base_events, "_set_nodelay", None)
    if original is None or getattr(original, "_aghmn", False):
        return

    def set_nodelay(sock):
        original(sock)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM and sock.proto == 0:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    set_nodelay._aghmn = True
    base_events._set_nodelay = set_nodelay


def build_app(config, replicas: int = 2, redis_url: Optional[str] = None, max_ongoing: int = 4096,
              cpus_per_replica: float = 0.5, proxy: Optional[str] = None):
    """The bound Ray Serve application (pass it to ``serve.run``).

    Args:
        config: a :class:`~aghmn_runtime.serving.app.ServeConfig`; its ``state`` is replaced by
            ``redis_url``.
        replicas: number of replicas.
        redis_url: the shared store (required: replicas must see each other's conversations).
        max_ongoing: requests a replica accepts at once (Ray's default of a few would starve the
            micro-batcher).
        cpus_per_replica: the Ray CPU resource each replica reserves.
        proxy: ``"python"`` adds the consistent-hash request router; ``"haproxy"`` leaves
            balancing to HAProxy (which refuses a custom router); default: ``"haproxy"`` if
            ``$RAY_SERVE_ENABLE_HA_PROXY`` is 1, else ``"python"``.
    """
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    if not redis_url or not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("--ray needs --redis redis://HOST:PORT (the store every replica shares)")
    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    options = dataclasses.asdict(config)
    options["state"] = redis_url
    if proxy is None:
        proxy = "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "python"
    if proxy not in ("python", "haproxy"):
        raise ValueError(f"--ray-proxy must be 'haproxy' or 'python', got {proxy!r}")
    routing = {}
    if proxy == "python":
        routing["request_router_config"] = RequestRouterConfig(
            request_router_class=ROUTER, request_router_kwargs={"num_fallback_replicas": 1})
    deployment = serve.deployment(
        serve.ingress()(AGHMNReplica), name="aghmn", num_replicas=replicas,
        max_ongoing_requests=max_ongoing, ray_actor_options={"num_cpus": cpus_per_replica},
        health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=30,
        # no line per request in the replica's log, as the single server writes none (/metrics
        # counts the requests); the ingress loop spent about 10% of its busy samples writing them
        # (py-spy), though turning them off changed the throughput by less than the noise
        logging_config={"enable_access_log": False}, **routing)
    return deployment.bind(options)


def package_roots() -> list:
    """The folders the driver imports ``aghmn_runtime`` (and ``aghmn_fast``, when imported: the
    torch recognizer) from."""
    roots = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    torch_engine = sys.modules.get("aghmn_fast")
    if torch_engine is not None and getattr(torch_engine, "__file__", None):
        roots.append(os.path.dirname(os.path.dirname(os.path.abspath(torch_engine.__file__))))
    return roots


HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": "hdr(x-session-id)"}
#: Ray Serve settings for the processes this driver starts, unless set already (the user's win):
#: - the proxies' readiness and health checks wait 30 s, not 5 s and 10 s: on a loaded machine
#:   (load average 4 on 2 cores) a proxy missed 5 s three times, was killed, and the start
#:   failed with ActorDiedError;
#: - a replica behind HAProxy stays reachable for 2 s once told to stop, not 30 s: that window
#:   lets HAProxy deregister one replica of a running deployment, but the CLI only stops the
#:   whole deployment, ingress included, so stopping took over 30 s ("Controller failed to shut
#:   down within 30.0s") for nothing.
#: - the replicas' event loops are asyncio's, not uvloop: behind HAProxy a third of the requests
#:   arrive on a new connection (HAProxy resets idle server connections and opens new ones), and
#:   a loaded replica on uvloop let 200 to 450 of them wait in its listen queue, for about 1 s
#:   each, while its loop sat idle in epoll; that was the p99 at 1,024 conversations (p99/p50
#:   5.9 to 6.3). asyncio's loop kept the queue under 80 and the ratio at 2.5
#:   (docs/results/serving-ray-tail.md).
#: (HAProxy's threads and per-request metrics stay Serve's: one thread made the clients' latencies
#: even on 2 cores but raised the median and lowered throughput, docs/results/serving-deploy.md.)
RAY_ENV_DEFAULTS = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
                    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2", "RAY_USE_UVLOOP": "0"}
#: Seconds the CLI waits for the deployment to answer /readyz through its ingress
#: ($AGHMN_RAY_START_TIMEOUT overrides).
START_TIMEOUT_S = 300.0


class RayStartError(RuntimeError):
    """Ray Serve did not start; the message names the cause in one line."""


def run_ray(config, replicas: int, redis_url: Optional[str], address: Optional[str] = None,
            proxy: str = "haproxy", prog: str = "aghmn-fast serve") -> int:
    """Start (or join) Ray, deploy, and serve on ``config.host:config.port`` until SIGINT/SIGTERM;
    returns the exit code.

    The line that says where it listens (``prog``: the command's name) is printed once the
    deployment answers ``/readyz`` through its ingress. A start that fails (Ray, the replicas,
    the proxy, or no answer within ``$AGHMN_RAY_START_TIMEOUT`` seconds, default 300) is one
    line ``PROG: error: Ray Serve did not start: ...`` and exit 1. SIGINT and SIGTERM, while
    starting or serving, stop the deployment (replicas drain) and Ray, and exit 0.
    """
    if proxy == "haproxy":
        # read by Serve's controller and proxies, which inherit the environment of the Ray
        # processes this driver starts (set them on the cluster when joining one)
        os.environ.update(HAPROXY_ENV)
    tuning = {k: v for k, v in RAY_ENV_DEFAULTS.items() if k not in os.environ}
    os.environ.update(tuning)
    timeout = float(os.environ.get("AGHMN_RAY_START_TIMEOUT", START_TIMEOUT_S))
    from .sockets import bind_socket
    bind_socket(config.host, config.port).close()   # a port in use: one line, exit 2, before Ray starts
    # Ray's native failure-signal handler, installed in this driver by ray.init, turns a SIGTERM
    # into a stack dump and an abort (exit 134): off in the driver (read when ray is imported),
    # left on in the Ray processes it starts (which do not inherit the variable)
    disabled = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER" not in os.environ
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    import ray
    from ray import serve
    if disabled:
        del os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"]

    app = build_app(config, replicas, redis_url, proxy=proxy)
    # the replicas must import this package (and the torch recognizer's plug-in, when loaded) as the driver does
    pythonpath = os.pathsep.join(p for p in (*package_roots(), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": pythonpath, **tuning, **(HAPROXY_ENV if proxy == "haproxy" else {})}
    stop = threading.Event()
    # from here on SIGINT and SIGTERM only ask to stop; ray.init would replace the SIGTERM
    # handler with its own (sys.exit in the middle of its start: a segfault in the shutdown that
    # follows), so it is kept from doing so while it runs
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with _keep_signal_handlers(ray):
            ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    except Exception as exc:  # noqa: BLE001 - one line naming the cause, not a traceback
        ray.shutdown()
        return _start_failed(prog, f"Ray did not start: {_cause(exc)}")
    try:
        try:
            _deploy(serve, app, config, stop, timeout)
        except RayStartError as exc:
            return _start_failed(prog, str(exc))
        if not stop.is_set():
            print(f"{prog}: Ray Serve on http://{config.host}:{config.port} with {replicas} "
                  f"replica(s) behind the {proxy} proxy, store {redis_url}; route with the "
                  f"{SESSION_HEADER} header", flush=True)
            stop.wait()
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0


@contextlib.contextmanager
def _keep_signal_handlers(ray):
    """Keep ray.init from installing its own SIGTERM handlers (``ray._private.utils.
    set_sigterm_handler``, in the driver and for the local node it starts)."""
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    original = getattr(utils, "set_sigterm_handler", None)
    if original is None:
        yield
        return
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = original


def _deploy(serve, app, config, stop: threading.Event, timeout: float) -> None:
    """Start Serve and the application on a helper thread (so that a signal can stop a start in
    progress), then wait until the ingress answers /readyz; raises :class:`RayStartError`."""
    failure = []

    def start():
        try:
            serve.start(http_options={"host": config.host, "port": config.port})
            serve.run(app, name="aghmn", route_prefix="/")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)

    starter = threading.Thread(target=start, name="aghmn-ray-start", daemon=True)
    starter.start()
    deadline = time.monotonic() + timeout
    while starter.is_alive() and not stop.is_set():
        if time.monotonic() > deadline:
            raise RayStartError(f"the application was not running within {timeout:g} s{_load()}")
        starter.join(0.2)
    if stop.is_set():
        return
    if failure:
        raise RayStartError(f"{_replica_error(serve) or _cause(failure[0])}{_load()}")
    probe = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    while not stop.is_set():
        if _ready(probe, config.port):
            return
        if time.monotonic() > deadline:
            raise RayStartError(f"the ingress on {config.host}:{config.port} did not answer /readyz within "
                                f"{timeout:g} s{_load()}")
        stop.wait(0.2)


def _replica_error(serve) -> Optional[str]:
    """The error a replica's constructor raised (the last ``Name: message`` line of the
    deployment's status message), e.g. a store of another model; None if there is none."""
    try:
        deployments = serve.status().applications["aghmn"].deployments.values()
        message = "\n".join(d.message or "" for d in deployments)
    except Exception:  # noqa: BLE001 - Serve may be half started: fall back to the start's error
        return None
    errors = re.findall(r"^\s*((?:\w+\.)*\w*(?:Error|Exception)\b: .+)$", re.sub(r"\x1b\[[0-9;]*m", "", message), re.M)
    return f"a replica failed: {errors[-1].strip()}" if errors else None


def _ready(host: str, port: int) -> bool:
    import http.client
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/readyz", headers={SESSION_HEADER: "aghmn-ray-start"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _cause(exc: BaseException) -> str:
    """``Type: first line`` of the innermost error (a Ray task's error wraps its cause in a
    multi-line, coloured message)."""
    while isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip() if lines else type(exc).__name__}"


def _load() -> str:
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    return f" (load average {load:.1f} on {os.cpu_count()} CPUs; Serve's logs: /tmp/ray/session_latest/logs/serve)"


def _start_failed(prog: str, why: str) -> int:
    print(f"{prog}: error: Ray Serve did not start: {why}", file=sys.stderr, flush=True)
    return 1
