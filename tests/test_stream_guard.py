"""The proxy's stream guard (serve_app.stream_guard) at the ASGI level: an event stream that its
app stopped short (as Serve's proxy does when the ingress replica dies mid-stream) ends with an
OpenAI-style error event and a proper end; a request left with no response at all gets an
OpenAI-style 502; finished responses pass as they are. The e2e ingress kill (tests/e2e/test_fault_tolerance.py) sees it through the real proxy."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_app.stream_guard import StreamGuard

SSE = [(b"Content-Type", b"text/event-stream; charset=utf-8")]
JSON = [(b"content-type", b"application/json")]


def app_sending(headers, finish: bool, fail: bool = False):
    async def app(scope, receive, send):
        if headers is None:  # the proxy sends nothing when a unary request's replica died
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'data: {"x":1}\n\n', "more_body": True})
        if fail:
            raise RuntimeError("replica died")
        if finish:
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def run(app) -> tuple[list[dict], list[str]]:
    sent, cuts = [], []
    guard = StreamGuard(app, count_lost=cuts.append)

    async def send(message):
        sent.append(message)

    asyncio.run(guard({"type": "http", "path": "/v1/completions"}, None, send))
    return sent, cuts


@pytest.mark.parametrize("fail", [False, True], ids=["returned", "raised"])
def test_an_event_stream_cut_short_ends_with_an_error_event(fail):
    sent, cuts = run(app_sending(SSE, finish=False, fail=fail))
    last = sent[-1]
    assert last["type"] == "http.response.body" and not last["more_body"]
    event, data = last["body"].decode().strip().split("\n")
    assert event == "event: error"
    error = json.loads(data.removeprefix("data: "))["error"]
    assert error["code"] == "stream_lost" and "Retry" in error["message"]
    assert cuts == ["stream_lost"]


def test_a_finished_stream_passes_unchanged():
    sent, cuts = run(app_sending(SSE, finish=True))
    assert [m.get("body") for m in sent[1:]] == [b'data: {"x":1}\n\n', b"data: [DONE]\n\n"]
    assert cuts == []


def test_other_responses_are_left_alone():
    sent, cuts = run(app_sending(JSON, finish=False))
    assert len(sent) == 2 and cuts == []
    with pytest.raises(RuntimeError):
        run(app_sending(JSON, finish=False, fail=True))


def test_a_request_left_without_a_response_gets_an_openai_style_502():
    sent, cuts = run(app_sending(None, finish=False))
    assert sent[0]["status"] == 502 and (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "replica_lost"
    assert cuts == ["replica_lost"]
