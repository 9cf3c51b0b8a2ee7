"""`python -m benchmarks.bench_slo admission`: SLO-aware admission on the multi-SLO mix of
benchmarks.bench_slo, off, reject and demote, judged over every request sent."""

from __future__ import annotations

from benchmarks.bench_slo import (
    MAX_OUTPUT,
    PROFILE,
    REPLICAS,
    SLOS,
    capacity,
    mix_file,
    shipped_predictions,
    with_mix_predictions,
)
from benchmarks.report import update_section
from cluster.config import (
    AdmissionConfig,
    EngineConfig,
    PolicyConfig,
    SchedulerConfig,
    SLOClass,
    SLOConfig,
    SLOSearchConfig,
)
from cluster.metrics import timing_of
from cluster.request import RequestState
from cluster.sim.simulator import SimulationConfig, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.workload import build_workload

BEST_EFFORT = SLOClass("best_effort", e2e_s=300.0)  # where `--modes demote` puts a request


def admission(
    loads: list[float],
    seeds: list[int],
    duration: float,
    policies: list[str],
    modes: list[str],
    predictor: str,
) -> None:
    """SLO-aware admission (`admission.slo_unreachable`) on the mix: judged, whatever the mode,
    over every request sent and by the class it was sent with (a refused request meets
    nothing, a demoted one is held to its original bound)."""
    records = mix_file()
    cap = capacity(records)
    slos = SLOConfig((*SLOS.classes, BEST_EFFORT), default=SLOS.default)
    predictions = shipped_predictions(records) if predictor == "shipped" else None
    rows = [
        "| load | policy | admission | refused | demoted | met / sent | SLO attainment (all sent) "
        "| code | chat | longform | goodput (req/s) | mean e2e served (s) | `summarize` SLO % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for load, seed in ((load, seed) for load in loads for seed in seeds):
        rate = load * cap
        items = with_mix_predictions(
            build_workload(
                records, f"poisson:{rate}", int(rate * duration), seed, max_output_tokens=MAX_OUTPUT
            ),
            predictions,
        )
        sent = {item.request_id: item.slo for item in items}
        for name, mode in ((name, mode) for name in policies for mode in modes):
            admit = AdmissionConfig(
                slo_unreachable=mode,
                best_effort_class=BEST_EFFORT.name if mode == "demote" else None,
            )
            search = SLOSearchConfig(max_wall_ms=None, seed=seed)
            scheduler = SchedulerConfig(
                policy=PolicyConfig(name=name, slo_search=search), admission=admit, slo=slos
            )
            config = SimulationConfig(
                scheduler, EngineConfig(), load_profile(PROFILE), replicas=REPLICAS
            )
            r = simulate(items, config)
            m = r.metrics
            met = {c: [0, 0] for c in SLOS.names}  # class sent with -> [sent, met]
            done = {q.request_id: q for q in r.requests if q.state is RequestState.FINISHED}
            for rid, sent_as in sent.items():
                slo, q = slos.get(sent_as), done.get(rid)
                met[slo.name][0] += 1
                if q is not None and slo.met((t := timing_of(q)).ttft, t.tpot, t.e2e):
                    met[slo.name][1] += 1
            total = sum(c[1] for c in met.values())
            by = {k: f"{100 * v[1] / v[0]:.1f}%" for k, v in met.items() if v[0]}
            line = (
                f"| {load:g}x | {name} | {mode} | {sum(r.shed.values())} | {r.slo_demoted} | "
                f"{total} / {len(items)} | {100 * total / len(items):.1f}% | {by.get('code', '-')} | {by.get('chat', '-')} "
                f"| {by.get('longform', '-')} | {total / m.duration_s:.2f} | "
                f"{m.e2e_latency_s.mean:.2f} | {100 * m.slo_attainment:.1f}% |"
            )
            print(line, f"(seed {seed}, wall {r.wall_time_s:.0f} s)", flush=True)
            rows.append(line)
    update_section(
        "slo-admission",
        "### SLO-aware admission on the multi-SLO mix\n\nThe mix above (4 a100-llama3-8b "
        f"replicas, Poisson arrivals for {duration:g} s, seeds {seeds}, capacity {cap:.1f} "
        "req/s). `admission.slo_unreachable`: off; reject (429 `slo_unreachable`); demote (to "
        f"`{BEST_EFFORT.name}`, e2e {BEST_EFFORT.e2e_s:g} s). Attainment and goodput over every "
        "request sent, each judged by the class it was sent with; `summarize` SLO %: the "
        "simulator's own figure, which judges a demoted request by its new class. Goodput: met requests per second from the first arrival to the "
        "last finish (`summarize`'s window), which refusals shorten.\n\n" + "\n".join(rows),
    )
