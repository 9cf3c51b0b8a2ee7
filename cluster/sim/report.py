"""How simulation results are shown: a terminal table and latency CDF plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cluster.sim.simulator import SimulationResult

_COLUMNS = [
    ("policy", lambda r: r.policy, "{}"),
    ("done", lambda r: r.metrics.completions, "{:d}"),
    ("e2e mean", lambda r: r.metrics.e2e_latency_s.mean, "{:.2f}"),
    ("e2e p99", lambda r: r.metrics.e2e_latency_s.p99, "{:.2f}"),
    ("s/token mean", lambda r: r.metrics.per_token_latency_s.mean, "{:.4f}"),
    ("s/token p99", lambda r: r.metrics.per_token_latency_s.p99, "{:.4f}"),
    ("TTFT mean", lambda r: r.metrics.ttft_s.mean, "{:.2f}"),
    ("TTFT p99", lambda r: r.metrics.ttft_s.p99, "{:.2f}"),
    ("TPOT mean", lambda r: r.metrics.tpot_s.mean, "{:.4f}"),
    ("max wait p99", lambda r: r.metrics.max_wait_s.p99, "{:.2f}"),
    ("req/s", lambda r: r.metrics.throughput_rps, "{:.2f}"),
    ("SLO %", lambda r: 100 * r.metrics.slo_attainment, "{:.1f}"),
    ("goodput", lambda r: r.metrics.goodput_rps, "{:.2f}"),
    ("tok/s", lambda r: r.metrics.throughput_tps, "{:.0f}"),
    ("preempt", lambda r: r.engine_preemptions, "{:d}"),
    ("sched preempt", lambda r: r.scheduler_preemptions, "{:d}"),
    ("cache hit %", lambda r: 100 * r.cached_tokens / max(1, r.admitted_tokens), "{:.1f}"),
    ("recomputed", lambda r: r.recomputed_tokens, "{:d}"),
]


def format_table(results: list[SimulationResult]) -> str:
    """Latencies in seconds; one row per policy."""
    rows = [[name for name, _, _ in _COLUMNS]]
    for r in results:
        rows.append([fmt.format(get(r)) for _, get, fmt in _COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    extra = [
        f"{r.policy}: time to K answers {r.time_to_k_s:.2f} s"
        for r in results
        if r.time_to_k_s is not None
    ]
    extra += [
        f"{r.policy}: shed by admission control "
        + ", ".join(f"{reason} {n}" for reason, n in sorted(r.shed.items()))
        for r in results
        if r.shed
    ]
    extra += [
        f"{r.policy}: {r.slo_demoted} demoted to the best-effort SLO class"
        for r in results
        if r.slo_demoted
    ]
    if any(len(r.metrics.slo_classes) > 1 for r in results):
        extra += [
            f"{r.policy}: SLO attainment by class: "
            + ", ".join(
                f"{name} {100 * c.attainment:.1f}% of {c.requests}"
                for name, c in r.metrics.slo_classes.items()
            )
            for r in results
        ]
    return "\n".join(lines + extra)


def plot_cdfs(results: list[SimulationResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("end-to-end latency (s)", lambda t: t.e2e),
        ("per-token latency (s/token)", lambda t: t.per_token),
        ("time to first token (s)", lambda t: t.ttft),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (label, get) in zip(axes, panels, strict=True):
        for r in results:
            values = np.sort([get(t) for t in r.timings])
            if values.size:
                ax.plot(values, np.arange(1, values.size + 1) / values.size, label=r.policy)
        ax.set_xscale("symlog", linthresh=1e-2)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
