"""Operate a running rankserve cluster through its scheduler actor.

    python -m serve_app.admin status              # the scheduler's view (as GET /status)
    python -m serve_app.admin scale 4             # grow or shrink the engine replicas
    python -m serve_app.admin policy fcfs         # switch the scheduling policy (once idle)
    python -m serve_app.admin stop                # stop engines and scheduler (then `serve shutdown`)

Connects with `ray.init(address=--address)` (default "auto": the cluster of this machine or of
RAY_ADDRESS), so it runs on a cluster node or as `ray job submit -- python -m serve_app.admin ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="auto")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("status")
    scale = sub.add_parser("scale")
    scale.add_argument("replicas", type=int)
    policy = sub.add_parser("policy")
    policy.add_argument("name")
    sub.add_parser("stop")
    args = p.parse_args(argv)

    import ray

    from cluster.config import PolicyConfig
    from cluster.runtime.names import NAMESPACE, SCHEDULER_ACTOR

    # Quiet (its output is the answer, often piped to jq) and on loopback when the cluster is
    # this machine's own (rankserve serve starts it on 127.0.0.1).
    local = args.address == "auto" and not os.environ.get("RAY_ADDRESS")
    ray.init(
        address=args.address,
        namespace=NAMESPACE,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
        **({"_node_ip_address": "127.0.0.1"} if local else {}),
    )
    try:
        scheduler = ray.get_actor(SCHEDULER_ACTOR, namespace=NAMESPACE)
    except ValueError:
        print(f"no {SCHEDULER_ACTOR} actor on this cluster: is rankserve running?", file=sys.stderr)
        return 1
    if args.action == "status":
        print(json.dumps(asdict(ray.get(scheduler.status.remote())), indent=1))
    elif args.action == "scale":
        print(" ".join(ray.get(scheduler.scale.remote(args.replicas))))
    elif args.action == "policy":
        ray.get(scheduler.set_policy.remote(PolicyConfig(name=args.name)))
        print(f"policy: {args.name}")
    else:
        ray.get(scheduler.shutdown.remote(), timeout=120)
        ray.kill(scheduler)
        print("scheduler and engine replicas stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
