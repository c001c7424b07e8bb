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

import dataclasses
import os
import signal
import sys
import threading
from typing import Optional

ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
SESSION_HEADER = "X-Session-Id"


class AGHMNReplica:
    """One Ray Serve replica: a ServingApp whose store is the shared Redis."""

    def __init__(self, config: dict):
        from .app import ServeConfig, ServingApp
        self.serving = ServingApp(ServeConfig(**config))

    def __serve_build_asgi_app__(self):
        """Ray Serve's hook for an ASGI app built in the replica (it runs the app's lifespan)."""
        return self.serving.app


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
        health_check_period_s=2, health_check_timeout_s=10, graceful_shutdown_timeout_s=30, **routing)
    return deployment.bind(options)


def package_roots() -> list:
    """The folders the driver imports ``aghmn_runtime`` (and ``aghmn_fast``, when imported: the
    torch engine) from."""
    roots = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    torch_engine = sys.modules.get("aghmn_fast")
    if torch_engine is not None and getattr(torch_engine, "__file__", None):
        roots.append(os.path.dirname(os.path.dirname(os.path.abspath(torch_engine.__file__))))
    return roots


HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": "hdr(x-session-id)"}


def run_ray(config, replicas: int, redis_url: Optional[str], address: Optional[str] = None,
            proxy: str = "haproxy", prog: str = "aghmn-fast serve") -> int:
    """Start (or join) Ray, deploy, and serve on ``config.host:config.port`` until SIGINT/SIGTERM
    (``prog`` names the command in the line that says where it listens)."""
    if proxy == "haproxy":
        # read by Serve's controller and proxies, which inherit the environment of the Ray
        # processes this driver starts (set them on the cluster when joining one)
        os.environ.update(HAPROXY_ENV)
    import ray
    from ray import serve

    app = build_app(config, replicas, redis_url, proxy=proxy)
    # the replicas must import this package (and the torch engine's, when loaded) as the driver does
    pythonpath = os.pathsep.join(p for p in (*package_roots(), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": pythonpath, **(HAPROXY_ENV if proxy == "haproxy" else {})}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(app, name="aghmn", route_prefix="/")
        print(f"{prog}: Ray Serve on http://{config.host}:{config.port} with {replicas} "
              f"replica(s) behind the {proxy} proxy, store {redis_url}; route with the "
              f"{SESSION_HEADER} header", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
