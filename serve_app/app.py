"""The Ray Serve application: `serve run serve_app.app:build_app` (arguments as key=value), or
`serve run serve_app/serve_config.yaml` / `serve deploy serve_app/serve_config.yaml`.

Without a `model` argument, the tiny local model is built (seconds) and served.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.config import ServeConfig
from serve_app.ingress import Ingress

APP_NAME = "rankserve"
GRPC_SERVICER = "serve_app.proto.rankserve_pb2_grpc.add_RankServeServicer_to_server"


def split_args(args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The application's arguments: the number of ingress replicas, and the ServeConfig
    settings."""
    settings = dict(args)
    return int(settings.pop("ingress_replicas", 1)), settings


def build_app(args: dict[str, Any]) -> Application:
    ingress_replicas, args = split_args(args)
    if not args.get("model"):
        from serve_app.tiny_model import build

        args["model"] = str(build())
    config = ServeConfig.from_dict(args)  # fail here, at deploy time, on bad settings
    return Ingress.options(num_replicas=ingress_replicas).bind(config.to_dict())
