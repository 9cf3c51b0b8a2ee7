import gzip
import json

import pytest

from cluster.workload.prompts import (
    DEMO_PROMPT_FILE,
    PromptFileError,
    PromptRecord,
    read_prompt_file,
    write_prompt_file,
)
from tests.support import FIXTURE


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.xz"])
def test_round_trip_all_fields(tmp_path, suffix):
    records = [
        PromptRecord(
            prompt="Write a haiku about queues.\nTwo lines of \u00e9t\u00e9 \U0001f600",
            output_tokens=17,
            prompt_tokens=9,
            score=-1.25,
            predicted_tokens=20.5,
            slo="chat",
            tenant="team-a",
            id="p1",
            source="unit",
            output="Waiting in the line",
        ),
        PromptRecord(prompt="short", output_tokens=1, prompt_tokens=0),
    ]
    path = tmp_path / f"prompts{suffix}"
    write_prompt_file(path, records)
    assert read_prompt_file(path) == records
    if suffix == ".jsonl.gz":
        with gzip.open(path, "rt") as f:
            assert json.loads(f.readline())["id"] == "p1"
    # None fields are left out of the file
    assert "score" not in records[1].to_json()


def test_shipped_fixture_and_demo_file_read():
    records = read_prompt_file(FIXTURE)
    assert len(records) == 300
    assert all(r.prompt_tokens > 0 and r.output_tokens >= 1 for r in records)
    assert read_prompt_file(DEMO_PROMPT_FILE) == records
    assert FIXTURE.stat().st_size < 300_000


def test_missing_token_counts_use_the_project_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    path = _write_lines(
        tmp_path / "p.jsonl",
        [
            json.dumps({"prompt": "Hello world", "output_tokens": 3}),
            json.dumps({"prompt": "a b c", "output": "one two three four"}),
        ],
    )
    a, b = read_prompt_file(path)
    assert (a.prompt_tokens, a.output_tokens) == (2, 3)
    assert (b.prompt_tokens, b.output_tokens, b.output) == (3, 4, "one two three four")


def test_blank_lines_and_unknown_keys_are_ignored(tmp_path):
    path = _write_lines(
        tmp_path / "p.jsonl",
        ["", json.dumps({"prompt": "x", "output_tokens": 2, "prompt_tokens": 1, "model": "m"})],
    )
    assert read_prompt_file(path) == [PromptRecord("x", 2, 1)]


@pytest.mark.parametrize(
    ("line", "field", "why"),
    [
        ('{"output_tokens": 3}', "prompt", "missing"),
        ('{"prompt": 5, "output_tokens": 3}', "prompt", "must be a string"),
        ('{"prompt": "x"}', "output_tokens", "missing"),
        ('{"prompt": "x", "output_tokens": 0}', "output_tokens", "integer >= 1"),
        ('{"prompt": "x", "output_tokens": 2.5}', "output_tokens", "integer >= 1"),
        ('{"prompt": "x", "output_tokens": true}', "output_tokens", "integer >= 1"),
        ('{"prompt": "x", "output_tokens": 3, "prompt_tokens": -1}', "prompt_tokens", ">= 0"),
        ('{"prompt": "x", "output_tokens": 3, "score": "high"}', "score", "finite number"),
        ('{"prompt": "x", "output_tokens": 3, "tenant": 7}', "tenant", "must be a string"),
    ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path, line, field, why):
    good = '{"prompt": "ok", "output_tokens": 1, "prompt_tokens": 1}'
    path = _write_lines(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(PromptFileError) as err:
        read_prompt_file(path)
    msg = str(err.value)
    assert f"{path}:2" in msg and repr(field) in msg and why in msg


def test_invalid_json_and_missing_file(tmp_path):
    path = _write_lines(tmp_path / "bad.jsonl", ['{"prompt": "x", '])
    with pytest.raises(PromptFileError, match=r"bad\.jsonl:1: not valid JSON"):
        read_prompt_file(path)
    with pytest.raises(PromptFileError, match="no such prompt file"):
        read_prompt_file(tmp_path / "absent.jsonl")
    path = _write_lines(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(PromptFileError, match="expected a JSON object"):
        read_prompt_file(path)
