"""The request log: bounded, rotating, readable as a prompt file (so `predictor train` takes it)."""

import json

import pytest

from cluster.workload.prompts import read_prompt_file
from predictor_actor.request_log import RequestLogEntry, RequestLogWriter
from predictor_actor.text import conversation_prompt


def _entry(i: int, **kw) -> RequestLogEntry:
    base = dict(
        prompt=f"prompt {i} " + "word " * 20,
        output_tokens=10 + i,
        model="tiny-llama",
        arrival_time=1000.0 + i,
        finish_time=1001.5 + i,
    )
    return RequestLogEntry(**(base | kw))


def test_entries_read_back_as_prompt_records(tmp_path):
    path = tmp_path / "log.jsonl"
    with RequestLogWriter(path, max_bytes=1 << 20) as w:
        for i in range(5):
            assert w.write(
                _entry(i, id=f"r{i}", score=0.5, prompt_tokens=12, first_token_time=1000.2 + i)
            )
    recs = read_prompt_file(path)
    assert [r.output_tokens for r in recs] == [10, 11, 12, 13, 14]
    assert recs[0].id == "r0" and recs[0].source == "rankserve-request-log"
    line = json.loads(path.read_text().splitlines()[0])
    assert line["model"] == "tiny-llama" and line["finish_reason"] == "stop"
    assert line["arrival_time"] == 1000.0 and line["finish_time"] == 1001.5


def test_unfinished_or_empty_requests_are_not_logged(tmp_path):
    w = RequestLogWriter(tmp_path / "log.jsonl", max_bytes=4096)
    assert not w.write(_entry(0, finish_reason="abort"))
    assert not w.write(_entry(0, output_tokens=0))
    assert w.write(_entry(0, finish_reason="length", max_tokens=10))
    assert (w.written, w.dropped) == (1, 2)


def test_log_rotates_within_its_bound(tmp_path):
    path = tmp_path / "log.jsonl"
    w = RequestLogWriter(path, max_bytes=2048, backups=2)
    for i in range(100):
        assert w.write(_entry(i))
    w.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    assert all(f.stat().st_size <= 2048 for f in files)
    # the newest entries are in the live file
    assert json.loads(path.read_text().splitlines()[-1])["output_tokens"] == 109


def test_log_without_backups_stops_when_full(tmp_path):
    w = RequestLogWriter(tmp_path / "log.jsonl", max_bytes=2048, backups=0)
    results = [w.write(_entry(i)) for i in range(100)]
    assert results[0] and not results[-1] and w.full
    assert (tmp_path / "log.jsonl").stat().st_size <= 2048
    with pytest.raises(ValueError):
        RequestLogWriter(tmp_path / "x", max_bytes=10)


def test_chat_conversation_becomes_one_prompt():
    prompt = conversation_prompt(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Tell me a story\ud800"},
        ]
    )
    assert prompt.splitlines() == [
        "system: Be brief.",
        "user: Hello",
        "assistant: Hi!",
        "user: Tell me a story\ufffd",
    ]
