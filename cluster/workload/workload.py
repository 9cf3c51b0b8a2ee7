"""A workload: the requests a simulation or benchmark sends, each with its arrival time.

Prompts come from a prompt file; arrivals from an arrival spec (cluster.workload.arrivals).
With a `trace:` spec and `lengths_from_trace`, the trace rows' input and output lengths drive
the requests instead and no prompt text is needed.

Synthetic data generation (the LTR paper's "time until K answers are done") is a burst of
prompts; the simulator stops at K completions or at a time limit, so it needs nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster.numbers import ceil_div
from cluster.workload.arrivals import arrival_times, parse_arrivals, replay_trace
from cluster.workload.prompts import PromptRecord
from cluster.workload.traces import load_trace


@dataclass(frozen=True, slots=True)
class WorkloadItem:
    request_id: str
    arrival_time: float
    prompt: str | None
    prompt_tokens: int
    output_tokens: int
    score: float | None
    predicted_tokens: float | None
    slo: str | None
    tenant: str | None
    # The prompt's chained 512-token block hashes (a Mooncake trace's, or a prompt file's), for
    # prefix caching; None: requests share blocks only when their prompt text is the same.
    hash_ids: tuple[int, ...] | None = None


def prompt_order(num_prompts: int, num_requests: int, seed: int) -> np.ndarray:
    """Which prompt each request uses: a seeded permutation of the prompts, and when there are
    more requests than prompts, further permutations after it, so each prompt is used
    either floor or ceil(num_requests / num_prompts) times."""
    rng = np.random.default_rng((seed, 1))  # a stream apart from the arrival process's
    passes = ceil_div(num_requests, num_prompts)
    order = np.concatenate([rng.permutation(num_prompts) for _ in range(passes)])
    return order[:num_requests]


def build_workload(
    prompts: list[PromptRecord] | None,
    arrivals: str,
    num_requests: int | None,
    seed: int,
    target_rate: float | None = None,
    lengths_from_trace: bool = False,
    max_output_tokens: int | None = None,
) -> list[WorkloadItem]:
    """The workload's requests in arrival order.

    `num_requests` None means one request per prompt (or per trace row with
    `lengths_from_trace`). Prompts are drawn in a seeded random order and reused in further
    random orders when more requests than prompts are asked for. `max_output_tokens` caps each
    answer (as a server's max_tokens would).
    """
    spec = parse_arrivals(arrivals)
    if num_requests is not None and num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    if max_output_tokens is not None and max_output_tokens < 1:
        raise ValueError(f"max_output_tokens must be >= 1, got {max_output_tokens}")
    cap = max_output_tokens if max_output_tokens is not None else np.iinfo(np.int64).max

    if lengths_from_trace:
        if spec.kind != "trace":
            raise ValueError(f"lengths_from_trace needs a trace: arrival spec, got {spec}")
        if prompts is not None:
            raise ValueError("lengths_from_trace takes lengths from the trace; pass no prompts")
        if target_rate is not None and spec.rate is not None and target_rate != spec.rate:
            raise ValueError(f"arrival spec {spec} and target rate {target_rate:g} disagree")
        trace = load_trace(spec.trace_path)
        n = len(trace) if num_requests is None else num_requests
        times, idx = replay_trace(trace, n, target_rate if target_rate is not None else spec.rate)
        return [
            WorkloadItem(
                request_id=f"req-{i:06d}",
                arrival_time=float(times[i]),
                prompt=None,
                prompt_tokens=int(trace.input_tokens[j]),
                # A trace row with 0 generated tokens still produced its end token.
                output_tokens=int(min(max(1, trace.output_tokens[j]), cap)),
                score=None,
                predicted_tokens=None,
                slo=None,
                tenant=None,
                hash_ids=trace.hash_ids[j] if trace.hash_ids is not None else None,
            )
            for i, j in enumerate(idx)
        ]

    if not prompts:
        raise ValueError("build_workload needs prompts (or a trace with lengths_from_trace)")
    n = len(prompts) if num_requests is None else num_requests
    times = arrival_times(spec, n, seed, target_rate)
    items = []
    for i, j in enumerate(prompt_order(len(prompts), n, seed)):
        rec = prompts[j]
        if rec.prompt_tokens is None:
            raise ValueError(
                f"prompt {rec.id or j} has no prompt_tokens; read prompt files with "
                "read_prompt_file, which counts them"
            )
        items.append(
            WorkloadItem(
                request_id=f"req-{i:06d}" + (f"-{rec.id}" if rec.id else ""),
                arrival_time=float(times[i]),
                prompt=rec.prompt,
                prompt_tokens=rec.prompt_tokens,
                output_tokens=min(rec.output_tokens, cap),
                score=rec.score,
                predicted_tokens=rec.predicted_tokens,
                slo=rec.slo,
                tenant=rec.tenant,
            )
        )
    return items
