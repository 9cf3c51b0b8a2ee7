"""The chaos benchmark's load (benchmarks.bench_chaos) and its account: a closed loop of
streamed completions whose lengths are forced (`max_tokens` + `ignore_eos`), each checked token
by token against that length, and each counted in the phase (the kill) it started in."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field

import httpx

MODEL = "rankserve-tiny-llama"


@dataclass
class Outcome:
    phase: str
    expected: int
    tokens: int = 0
    done: bool = False  # [DONE] arrived
    error_event: bool = False
    http_error: int | None = None
    cut: bool = False  # the connection dropped
    why: str = ""  # the error's message, for a failed or cut request
    ended: bool = False

    @property
    def kind(self) -> str:
        if self.error_event or self.http_error:
            return "failed"
        if self.cut:
            return "cut"
        if not self.done:
            return "lost"
        return "whole" if self.tokens == self.expected else "wrong count"


@dataclass
class Phase:
    kind: str
    outcomes: list[Outcome] = field(default_factory=list)
    recovery_s: float | None = None
    note: str = ""


def forced_stream(rng: random.Random, max_tokens: int) -> dict:
    """A streamed completion of exactly `max_tokens` tokens (ignore_eos), with a random prompt
    and usage at its end, so that every token can be counted."""
    return {
        "model": MODEL,
        "prompt": f"request {rng.random():.6f} " * rng.randint(1, 20),
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def one_request(client: httpx.AsyncClient, phase: Phase, rng: random.Random) -> None:
    n = rng.randint(32, 160)
    out = Outcome(phase.kind, n)
    phase.outcomes.append(out)
    body = forced_stream(rng, n)
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                out.http_error = r.status_code
                out.why = f"HTTP {r.status_code}: {error_message(await r.aread())}"
                return
            async for line in r.aiter_lines():
                if line == "event: error":
                    out.error_event = True
                elif line == "data: [DONE]":
                    out.done = True
                elif line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if "error" in event:
                        out.why = event["error"]["message"]
                    elif event.get("usage"):
                        out.tokens = event["usage"]["completion_tokens"]
    except httpx.HTTPError as e:
        out.cut = True
        out.why = f"{type(e).__name__}: {str(e)[:100]}"
    finally:
        out.ended = True


async def load(url: str, concurrency: int, state: dict, stop: asyncio.Event) -> None:
    """A closed loop: `concurrency` clients, each sending its next request when one ends
    (while `state["running"]` is set); each request belongs to the phase it started in."""
    rng = random.Random(0)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def worker() -> None:
            while not stop.is_set():
                await state["running"].wait()
                await one_request(client, state["phase"], rng)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def table(phases: list[Phase]) -> list[str]:
    kinds = ("whole", "failed", "cut", "lost", "wrong count")
    rows = [
        "| kill | requests | " + " | ".join(kinds) + " | tokens repeated | tokens dropped "
        "| recovery (s) |",
        "|---|---|" + "---|" * len(kinds) + "---|---|---|",
    ]
    for p in phases:
        counts = {k: sum(o.kind == k for o in p.outcomes) for k in kinds}
        repeated = sum(max(0, o.tokens - o.expected) for o in p.outcomes if o.done)
        dropped = sum(max(0, o.expected - o.tokens) for o in p.outcomes if o.done)
        rec = "; ".join(filter(None, [p.recovery_s and f"{p.recovery_s:.1f}", p.note]))
        rows.append(
            f"| {p.kind} | {len(p.outcomes)} | "
            + " | ".join(str(counts[k]) for k in kinds)
            + f" | {repeated} | {dropped} | {rec} |"
        )
    return rows


def reasons(phases: list[Phase]) -> list[str]:
    """Why the requests that did not come whole ended, per kill."""
    lines = []
    for p in phases:
        counts: dict[str, int] = {}
        for o in p.outcomes:
            if o.kind != "whole":
                key = f"{o.kind}: {o.why or 'no message'}"
                counts[key] = counts.get(key, 0) + 1
        lines += [f"- {p.kind}: {n} x {why}" for why, n in sorted(counts.items())]
    return lines or ["- every request came whole"]


def error_message(body: bytes) -> str:
    """An OpenAI-style error body's message, else the body's start."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return repr(body[:120])
