"""The peer benchmark's figures: one `PeerResult` per system, policy and workload; tables of
e2e, TTFT and TPOT (mean, p50, p99) and throughput side by side, each system's ratios
against the best peer, start-up times, and the CDF plot of e2e latency."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.metrics import RequestTiming, summarize


@dataclass(frozen=True, slots=True)
class PeerResult:
    system: str  # as the report names it, with the policy for rankserve ("rankserve ltr")
    peer: bool  # one of the systems rankserve is compared against
    workload: str  # "burst", "poisson:4.2"
    metrics: dict  # ServingMetrics.to_dict()
    e2e_s: list[float]  # every completed request's, for the CDF
    errors: list[str]

    @classmethod
    def of(
        cls,
        system: str,
        peer: bool,
        workload: str,
        timings: list[RequestTiming],
        failed: int,
        errors: list[str],
    ) -> PeerResult:
        metrics = summarize(timings, failed=failed)
        e2e = sorted(t.e2e for t in timings)
        return cls(system, peer, workload, metrics.to_dict(), e2e, errors[:10])

    def to_dict(self) -> dict:
        return asdict(self)


def best_peer(results: list[PeerResult], workload: str) -> PeerResult | None:
    """The peer with the lowest mean e2e latency on `workload` (among those that completed
    every request: a system that drops requests looks faster on the rest)."""
    peers = [
        r
        for r in results
        if r.peer
        and r.workload == workload
        and r.metrics["completions"]
        and not r.metrics["failed"]
    ]
    return min(peers, key=lambda r: r.metrics["e2e_latency_s"]["mean"], default=None)


def ratio(r: PeerResult, best: PeerResult, metric: str, stat: str = "mean") -> float:
    """`r`'s `metric` over the best peer's: below 1 is better for latencies."""
    if metric.startswith("throughput"):
        return r.metrics[metric] / best.metrics[metric]
    return r.metrics[metric][stat] / best.metrics[metric][stat]


def _dist(m: dict, key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
    d = m[key]
    return " | ".join(f"{scale * d[s]:{fmt}}" for s in ("mean", "p50", "p99"))


def table(results: list[PeerResult], workload: str) -> str:
    """The systems side by side on one workload, with ratios against its best peer."""
    best = best_peer(results, workload)
    head = (
        "| system | done | e2e mean | e2e p50 | e2e p99 | TTFT mean | TTFT p50 | TTFT p99 | "
        "TPOT mean (ms) | TPOT p50 | TPOT p99 | tok/s | req/s | "
        "vs best peer: e2e mean | e2e p99 | TTFT p99 | TPOT mean | tok/s |"
    )
    lines = [head, "|" + "---|" * 18]
    for r in (r for r in results if r.workload == workload):
        m = r.metrics
        done = f"{m['completions']}/{m['completions'] + m['failed']}"
        if not m["completions"]:
            lines.append(f"| {r.system} | {done} |" + " - |" * 16)
            continue
        if best is None:
            ratios = " - | - | - | - | - |"
        else:
            ratios = "".join(
                f" {ratio(r, best, k, s):.2f}x |"
                for k, s in (
                    ("e2e_latency_s", "mean"),
                    ("e2e_latency_s", "p99"),
                    ("ttft_s", "p99"),
                    ("tpot_s", "mean"),
                    ("throughput_tps", ""),
                )
            )
        lines.append(
            f"| {r.system}{' (best peer)' if r is best else ''} | {done} | "
            f"{_dist(m, 'e2e_latency_s')} | {_dist(m, 'ttft_s')} | "
            f"{_dist(m, 'tpot_s', 1e3, '.1f')} | {m['throughput_tps']:.0f} | "
            f"{m['throughput_rps']:.2f} |{ratios}"
        )
    return "\n".join(lines)


def startup_table(startups: dict[str, float | str]) -> str:
    """Seconds from nothing running to the first answer, per system (or why it never
    answered)."""
    lines = ["| system | start-up to first answer (s) |", "|---|---|"]
    for name, s in startups.items():
        lines.append(f"| {name} | {s:.1f} |" if isinstance(s, float) else f"| {name} | {s} |")
    return "\n".join(lines)


def cdf_plot(results: list[PeerResult], path: Path) -> None:
    """The e2e latency CDF of every system, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r.workload for r in results))
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for r in (r for r in results if r.workload == workload and r.e2e_s):
            n = len(r.e2e_s)
            ax.step(
                r.e2e_s,
                [(i + 1) / n for i in range(n)],
                where="post",
                label=r.system,
                linestyle="--" if r.peer else "-",
            )
        ax.set_title(workload)
        ax.set_xlabel("end-to-end latency (s)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
