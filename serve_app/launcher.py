"""Start and stop rankserve on a Ray cluster from a driver: `rankserve serve`, the end-to-end
tests and the live benchmark use these."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.runtime.names import NAMESPACE, PREDICTOR_ACTOR, SCHEDULER_ACTOR

READY_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class Endpoints:
    http: str  # base URL, e.g. http://127.0.0.1:8000
    grpc: str  # host:port


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (for tests and benchmarks that start their own service)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_ray(
    address: str, num_replicas: int, dashboard: bool = False, num_cpus: int | None = None
) -> None:
    """'local' starts a cluster of this machine (with the dashboard, `ray job submit` works
    against it at http://127.0.0.1:8265); anything else joins one ('auto', ray://...).
    `num_cpus`: the local cluster's logical CPUs (default: enough for the replicas)."""
    import ray

    if address == "local":
        from ray._private import ray_constants

        # Ray runs workers at nice 15 by default; the engines are the latency-critical work
        # here, and on a shared machine nice 15 starves them behind everything else.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Ray 2.60 moves a node given as 127.0.0.1 to the machine's outward address
        # (services.resolve_ip_for_localhost) unless clusters are off, and its metrics
        # exporter then listens on every interface; it has no setting for that address
        # (docs/metrics.md). A local cluster is one machine's: with clusters off while it
        # starts, the node stays on loopback and the exporter listens on 127.0.0.1 only.
        clusters, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
        try:
            ray.init(
                address="local",
                namespace=NAMESPACE,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1",
                # Logical CPUs: replicas take one each, the predictor half; on a small
                # machine they share the cores anyway.
                num_cpus=num_cpus or max(os.cpu_count() or 1, num_replicas + 2),
            )
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = clusters
    else:
        ray.init(address=address, namespace=NAMESPACE)


def start(
    settings: dict[str, Any],
    host: str,
    http_port: int,
    grpc_port: int,
    ready_timeout: float = READY_TIMEOUT_S,
) -> Endpoints:
    """Deploy the app on the connected cluster and wait until every engine replica is up."""
    from ray import serve
    from ray.serve.config import gRPCOptions

    from serve_app.app import APP_NAME, GRPC_SERVICER, build_app, split_args
    from serve_app.auth import a_key
    from serve_app.config import ServeConfig
    from serve_app.grpc_bind import proxy_env

    serve.start(
        http_options={"host": host, "port": http_port},
        grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[GRPC_SERVICER]),
        # The proxies, started by the controller, inherit its environment: gRPC on `host` too.
        controller_options={"runtime_env": {"env_vars": proxy_env(host)}},
    )
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    endpoints = Endpoints(f"http://{host}:{http_port}", f"{host}:{grpc_port}")
    key = a_key(ServeConfig.from_dict({"model": "-", **split_args(settings)[1]}).auth)
    headers = {"authorization": f"Bearer {key}"} if key else None
    wait_ready(endpoints.http + "/ready", ready_timeout, headers)
    return endpoints


def wait_http(
    url: str,
    timeout: float,
    ok: Callable[[Any], bool] = lambda r: r.status_code == 200,
    headers: dict[str, str] | None = None,
    interval: float = 1.0,
) -> None:
    """Poll GET `url` until `ok(response)`; TimeoutError with the last answer after `timeout`."""
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5, headers=headers)
            if ok(r):
                return
            last = f"HTTP {r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(interval)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s: {last}")


def wait_ready(url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    """Until every engine replica is up (GET /ready says so; `headers` carry an API key)."""

    def all_up(r: Any) -> bool:
        return r.status_code == 200 and r.json()["replicas_up"] == r.json()["replicas"]

    wait_http(url, timeout, all_up, headers)


def scheduler() -> Any:
    import ray

    return ray.get_actor(SCHEDULER_ACTOR, namespace=NAMESPACE)


def stop() -> None:
    """Stop the engines, the scheduler, the app and Serve; then disconnect (a local cluster
    started by `init_ray` stops with it)."""
    import ray
    from ray import serve

    try:
        handle = scheduler()
        ray.get(handle.shutdown.remote(), timeout=60)
        ray.kill(handle)  # for good: no restart
    except Exception:  # noqa: BLE001 - nothing to stop, or already gone
        pass
    with contextlib.suppress(ValueError):  # the detached predictor, if one was started
        ray.kill(ray.get_actor(PREDICTOR_ACTOR, namespace=NAMESPACE))
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
