"""Schemathesis against the live service's own OpenAPI document (`GET /openapi.json`, which
documents the request bodies: serve_app/http_api.py): bodies that fit the schema and bodies
that break it, a bounded number of each, on the package's vllm-cpu service. No answer may be
a 5xx, every 4xx must carry an OpenAI-style error body, and no stream may end in an error event
of the server's making (a 200 that hides a 500). The counts go to docs/benchmarks.md."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest

pytestmark = pytest.mark.slow

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from tests.e2e.vllm.conftest import MODEL  # noqa: E402

POST_EXAMPLES = 150  # per body route and mode: 600 requests, under a minute on the tiny model
GET_EXAMPLES = 5  # the GET routes take no input: a few calls each
# Fuzzed requests stay short: the tiny model makes ~150 tokens/s, and 240 requests of up to
# 1,008 tokens would take minutes. Longer ones are refused by length (tested in
# test_serving_e2e.py) or run the same code path.
MAX_FUZZ_TOKENS = 16


def _narrowed(doc: dict) -> dict:
    """The served document, with the model name and the SLO class pinned to what this service
    knows (an unknown one is one 404 or 400; every other check sits behind them) and max_tokens
    bounded, in the bodies that fit the schema (the negative ones break these too)."""
    doc = copy.deepcopy(doc)
    for name in ("CompletionBody", "ChatBody"):
        props = doc["components"]["schemas"][name]["properties"]
        props["model"] = {"type": "string", "enum": [MODEL]}
        props["slo"] = {"enum": [None, "default"]}  # the one class of the default SLOConfig
        for field in ("max_tokens", "max_completion_tokens"):
            if field in props:
                props[field] = {"type": "integer", "minimum": 1, "maximum": MAX_FUZZ_TOKENS}
    return doc


def _content_type(response) -> str:
    """Schemathesis' responses hold each header as a list of values."""
    for name, values in response.headers.items():
        if name.lower() == "content-type":
            return values[0] if isinstance(values, list) else values
    return ""


def _check(response, seen: Counter, problems: list[str], label: str) -> None:
    status = response.status_code
    seen[status] += 1
    text = response.text
    if status >= 500:
        problems.append(f"{label}: {status} {text[:300]}")
    elif status >= 400:
        try:
            error = json.loads(text)["error"]
            assert isinstance(error["message"], str) and error["message"]
            assert isinstance(error["type"], str) and error["type"]
            assert "Traceback" not in error["message"]
        except (ValueError, KeyError, TypeError, AssertionError):
            problems.append(f"{label}: {status} without an OpenAI error body: {text[:300]}")
    elif _content_type(response).startswith("text/event-stream"):
        for line in text.splitlines():
            if line.startswith("data: {") and '"error"' in line:
                error = json.loads(line[6:]).get("error", {})
                if error.get("type") == "server_error":
                    problems.append(f"{label}: 200 then an error event: {line[:300]}")


def _fuzz(operation, mode, examples: int, base_url: str, seen: Counter, problems: list[str]):
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run (CI reruns are comparable)
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=base_url, timeout=120)
        _check(response, seen, problems, f"{mode.value} {operation.label} {case.body!r:.200}")

    run()


def test_schemathesis_finds_no_5xx_and_only_openai_errors(server):
    base = server[0].http
    served = httpx.get(f"{base}/openapi.json", timeout=30)
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(_narrowed(served.json()))
    counts: dict[str, Counter] = {}
    problems: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() == "GET":
            plan = [(GenerationMode.POSITIVE, GET_EXAMPLES)]
        else:
            plan = [(mode, POST_EXAMPLES) for mode in GenerationMode]
        for mode, examples in plan:
            seen = counts.setdefault(f"{mode.value} {operation.label}", Counter())
            _fuzz(operation, mode, examples, base, seen, problems)
    for label, seen in counts.items():
        print(f"schemathesis {label}: {sum(seen.values())} requests, statuses {dict(seen)}")
    total = sum((c for c in counts.values()), Counter())
    print(
        f"schemathesis total: {sum(total.values())} requests, statuses {dict(sorted(total.items()))}"
    )
    assert not problems, "\n".join(problems[:20])
    # The fuzzer reached generation (200s) and the checks (400s) on both body routes.
    for path in ("/v1/completions", "/v1/chat/completions"):
        assert counts[f"positive POST {path}"][200] > 0, counts
        assert counts[f"negative POST {path}"][400] > 0, counts
