"""`python -m benchmarks.metrics_cost`: what the metrics cost (docs/metrics.md). It measures two
things, in a Ray worker on a local Ray cluster, so that Ray's metric mirrors record for real:

- the ingress's work when a request ends (`IngressMetrics.request_done`: 7 histograms, and one
  inter-token observation per token), with and without the Ray mirrors;
- the scheduler's work, which the scheduler actor does once a second and each GET /metrics
  asks for: its status turned into metric families with N requests queued, and their publishing
  into Ray's metrics API."""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.report import update_section


def ingress_cost(requests: int, tokens: int) -> dict[bool, float]:
    """Microseconds of request_done per request, without and with the Ray mirrors."""
    from serve_app.generation import GenerationRecord
    from serve_app.metrics import IngressMetrics

    out = {}
    for mirror in (False, True):
        metrics = IngressMetrics("bench", ray_metrics=mirror)
        records = []
        for _ in range(requests):
            r = GenerationRecord(prompt_tokens=10, arrival=0.0, score_s=0.001)
            r.dispatched = 0.01
            for t in range(tokens):
                r.tokens_arrived(1, 0.1 + 0.02 * t)
            r.output_token_ids = list(range(tokens))
            r.finished = 0.1 + 0.02 * tokens
            records.append(r)
        t0 = time.perf_counter()
        for r in records:
            metrics.request_done("ok", r)
        out[mirror] = (time.perf_counter() - t0) / requests * 1e6
    return out


def scheduler_cost(queued: int, repeats: int = 50) -> tuple[float, float]:
    """Median milliseconds of (status -> families) and of publishing them to Ray."""
    from cluster.config import EngineConfig
    from cluster.runtime.fleet import ReplicaFleet
    from cluster.runtime.metrics_export import RayPublisher, scheduler_families
    from cluster.runtime.spec import ReplicaConfig, replica_specs
    from cluster.runtime.status import cluster_status
    from tests.support import make_request, make_scheduler

    core, _ = make_scheduler("ltr")
    specs = replica_specs("/m", EngineConfig(), ReplicaConfig(), 2)
    fleet = ReplicaFleet(specs, lambda: None, lambda _: None, lambda *_: None)
    for i in range(queued):
        core.submit(make_request(f"r{i}", score=float(i)))
    publisher = RayPublisher()
    status_s, publish_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        families = scheduler_families(cluster_status(core, fleet))
        t1 = time.perf_counter()
        publisher.publish(families)
        status_s.append(t1 - t0)
        publish_s.append(time.perf_counter() - t1)
    return statistics.median(status_s) * 1e3, statistics.median(publish_s) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=100)
    args = parser.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False, num_cpus=1, log_to_driver=False)
    try:
        worker = ray.remote(num_cpus=0)(_Worker).remote()
        ingress = ray.get(worker.ingress.remote(args.requests, args.tokens))
        scheduler = {n: ray.get(worker.scheduler.remote(n)) for n in (0, 1_000, 10_000)}
    finally:
        ray.shutdown()
    lines = [
        f"Ingress, per request of {args.tokens} tokens ({args.requests} requests):",
        "",
        "| Ray mirrors | request_done |",
        "|---|---|",
        *(f"| {'on' if m else 'off'} | {us:.0f} us |" for m, us in ingress.items()),
        "",
        "Scheduler, once a second and per scrape (medians of 50):",
        "",
        "| queued | status to families | publish to Ray |",
        "|---|---|---|",
        *(f"| {n:,} | {a:.2f} ms | {b:.2f} ms |" for n, (a, b) in scheduler.items()),
    ]
    body = "### Metrics: the cost of the instrumentation\n\n" + "\n".join(lines)
    print(body)
    update_section("metrics_cost", body)


class _Worker:
    def ingress(self, requests: int, tokens: int) -> dict[bool, float]:
        return ingress_cost(requests, tokens)

    def scheduler(self, queued: int) -> tuple[float, float]:
        return scheduler_cost(queued)


if __name__ == "__main__":
    main()
