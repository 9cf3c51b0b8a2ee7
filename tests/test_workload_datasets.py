import json
import subprocess

import pytest

from cluster.workload.datasets import (
    DatasetError,
    answer_lengths_by_model,
    check_output_path,
    convert,
    list_models,
    parse_split,
    split_by_prompt,
)
from cluster.workload.prompts import PromptRecord, read_prompt_file
from serve_app.cli import main
from tests.support import FIXTURE, SHARED, needs_shared


def test_parse_split():
    assert parse_split("train:0.8,val:0.1,test:0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}
    for bad, msg in [
        ("train:0.8,val:0.1", "sum to 0.9"),
        ("train", "NAME:FRACTION"),
        ("a:x,b:1", "not a number"),
        ("a:0.5,a:0.5", "given twice"),
        ("a:0,b:1", r"in \(0, 1\]"),
    ]:
        with pytest.raises(DatasetError, match=msg):
            parse_split(bad)


def test_split_keeps_all_rows_of_a_prompt_together():
    # three answers per prompt, like one prompt answered by several models
    recs = [
        PromptRecord(f"prompt {i % 50}", 1 + j, 1, id=f"{i}-{j}")
        for i in range(50)
        for j in range(3)
    ]
    parts = split_by_prompt(recs, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    prompt_sets = {k: {r.prompt for r in v} for k, v in parts.items()}
    assert [len(s) for s in prompt_sets.values()] == [40, 5, 5]
    assert not (
        prompt_sets["train"] & prompt_sets["val"]
        or prompt_sets["train"] & prompt_sets["test"]
        or prompt_sets["val"] & prompt_sets["test"]
    )
    assert sum(len(v) for v in parts.values()) == len(recs)
    assert parts == split_by_prompt(recs, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)


def test_output_must_not_be_committable(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/runs/\n")
    check_output_path(repo / "runs" / "data" / "x.jsonl")
    check_output_path(tmp_path / "outside.jsonl")
    with pytest.raises(DatasetError, match="not git-ignored"):
        check_output_path(repo / "data" / "x.jsonl")


def test_cli_refuses_repo_paths_and_missing_shared_dir(tmp_path, capsys):
    code = main(
        [
            "data",
            "convert",
            "--dataset",
            "code_alpaca",
            "--out",
            str(FIXTURE.parent / "code_alpaca.jsonl"),
            "--shared-dir",
            str(tmp_path),
        ]
    )
    assert code == 2 and "not git-ignored" in capsys.readouterr().err
    code = main(
        [
            "data",
            "convert",
            "--dataset",
            "code_alpaca",
            "--out",
            str(tmp_path / "o.jsonl"),
            "--shared-dir",
            str(tmp_path / "absent"),
        ]
    )
    assert code == 2 and "shared data directory" in capsys.readouterr().err


def test_cli_inspect(capsys):
    assert main(["data", "inspect", str(FIXTURE), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == 300 and summary["with_output_text"] == 300
    assert main(["data", "inspect", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "300 records" in out and "output tokens (log-scale bins)" in out and "#" in out


@needs_shared
@pytest.mark.needs_shared
def test_convert_gpteacher_split_files(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    code = main(
        [
            "data",
            "convert",
            "--dataset",
            "gpteacher",
            "--out",
            str(tmp_path / "g.jsonl"),
            "--split",
            "train:0.8,val:0.1,test:0.1",
            "--limit",
            "400",
            "--keep-output",
            "--quiet",
        ]
    )
    assert code == 0
    parts = {s: read_prompt_file(tmp_path / f"g_{s}.jsonl") for s in ("train", "val", "test")}
    assert [len(v) for v in parts.values()] == [320, 40, 40]
    prompts = [{r.prompt for r in v} for v in parts.values()]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert all(r.output and r.source.startswith("gpteacher/") for v in parts.values() for r in v)


@needs_shared
@pytest.mark.needs_shared
def test_convert_models_of_arena_hard_and_alpaca_eval():
    pytest.importorskip("tokenizers")
    recs = convert("alpaca_eval", SHARED, model="gpt4_1106_preview", progress=False, limit=30)
    assert len(recs) == 30 and all(r.output is None and r.output_tokens >= 1 for r in recs)
    recs = convert("arena_hard", SHARED, model="gpt-3.5-turbo-0125", progress=False, limit=20)
    assert len(recs) == 20 and all(r.source == "arena_hard/arena-hard-v0.1" for r in recs)
    assert "gpt-4-0314" in list_models("arena_hard", SHARED)
    assert "NullModel" not in list_models("alpaca_eval", SHARED)
    with pytest.raises(DatasetError, match="excluded"):
        convert("alpaca_eval", SHARED, model="NullModel", progress=False)
    with pytest.raises(DatasetError, match="needs --model; models: .*gpt4_1106_preview"):
        convert("alpaca_eval", SHARED, progress=False)
    with pytest.raises(DatasetError, match="no answers of model 'nobody'"):
        convert("arena_hard", SHARED, model="nobody", progress=False)
    with pytest.raises(DatasetError, match="drop --model"):
        convert("code_alpaca", SHARED, model="x", progress=False)


@needs_shared
@pytest.mark.needs_shared
def test_answer_lengths_of_every_model_agree_with_convert():
    pytest.importorskip("tokenizers")
    lengths = answer_lengths_by_model("arena_hard", SHARED)
    assert len(lengths) >= 20 and "gpt-4-0314" in lengths
    one = convert("arena_hard", SHARED, model="gpt-3.5-turbo-0125", progress=False)
    assert {r.prompt: r.output_tokens for r in one} == lengths["gpt-3.5-turbo-0125"]
    with pytest.raises(DatasetError, match="one model"):
        answer_lengths_by_model("gpteacher", SHARED)
