"""`rankserve predictor train` and `eval` end to end on the small shipped fixture, including
training on a request log written by the serving path's writer."""

import json

from cluster.workload.prompts import read_prompt_file
from predictor_actor.request_log import RequestLogEntry, RequestLogWriter
from serve_app.cli import main
from tests.support import PREDICTOR_FIXTURE as FIXTURE


def test_train_then_eval(tmp_path, capsys):
    out, cache = tmp_path / "model", tmp_path / "cache"
    train_args = ["predictor", "train", "--data", str(FIXTURE), "--out", str(out)]
    train_args += ["--epochs", "6", "--max-length", "64", "--cache-dir", str(cache)]
    assert main(train_args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["prompts"] == 240 and summary["loss"] == "listmle"
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "head.safetensors",
        "MODEL_CARD.md",
        "checkpoint.pt",
    }
    # resuming a finished run trains no further and writes the same model
    assert main([*train_args, "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary

    rc = main(
        [
            "predictor",
            "eval",
            "--model",
            str(out),
            "--data",
            str(FIXTURE),
            "--cache-dir",
            str(cache),
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 240
    for key in ("kendall_tau", "mean_list_tau", "spearman", "heuristic_kendall_tau"):
        assert -1.0 <= result[key] <= 1.0
    assert result["kendall_tau"] > 0.2  # it learned something on data it mostly saw


def test_eval_default_model_and_train_on_a_request_log(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["predictor", "eval", "--data", str(FIXTURE), "--cache-dir", str(cache)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "default" and result["kendall_tau"] > 0.4

    log = tmp_path / "requests.jsonl"
    with RequestLogWriter(log, max_bytes=1 << 20) as w:
        for i, rec in enumerate(read_prompt_file(FIXTURE)):
            w.write(
                RequestLogEntry(rec.prompt, rec.output_tokens, "served-model", 100.0 + i, 105.0 + i)
            )
    out = tmp_path / "from_log"
    rc = main(
        [
            "predictor",
            "train",
            "--data",
            str(log),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--max-length",
            "64",
            "--loss",
            "regression",
            "--cache-dir",
            str(cache),
        ]
    )
    assert rc == 0
    assert json.loads((out / "config.json").read_text())["loss"] == "regression"


def test_bad_input_gives_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "no length here"}\n')
    assert main(["predictor", "eval", "--data", str(bad)]) == 2
    assert "output_tokens" in capsys.readouterr().err
    assert (
        main(["predictor", "eval", "--model", str(tmp_path / "none"), "--data", str(FIXTURE)]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
