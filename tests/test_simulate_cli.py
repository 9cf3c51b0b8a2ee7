"""`rankserve simulate` end to end on small prompt files: JSON and table output, the CDF plot,
synthetic-data-generation stops, errors, and the sanity bar on the shipped demo prompts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cluster.workload.prompts import PromptRecord, write_prompt_file
from serve_app.cli import main

N = 40
DISTRIBUTIONS = ("e2e_latency_s", "per_token_latency_s", "ttft_s", "tpot_s", "max_wait_s")
RANKSERVE = Path(sys.executable).with_name("rankserve")  # the installed console script


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    """Prompts with lengths and with the scores/predictions ltr and ssjf rank by."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(N):
        out = int(rng.integers(1, 400))
        records.append(
            PromptRecord(
                prompt=f"question {i}?",
                output_tokens=out,
                prompt_tokens=int(rng.integers(5, 300)),
                score=math.log(out) + float(rng.normal(0, 0.3)),
                predicted_tokens=float(out) * 1.2,
                id=f"p{i}",
            )
        )
    path = tmp_path_factory.mktemp("prompts") / "small.jsonl"
    write_prompt_file(path, records)
    return path


@pytest.fixture(scope="module")
def unscored_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "unscored.jsonl"
    write_prompt_file(
        path,
        [PromptRecord(prompt=f"q{i}", output_tokens=10 + i, prompt_tokens=8) for i in range(5)],
    )
    return path


def simulate(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["simulate", "--no-progress", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def strict(constant: str) -> None:
    raise ValueError(f"not JSON: {constant}")


def json_lines(out: str) -> list[dict]:
    """Each line parsed as strict JSON (no NaN or Infinity, which other tools reject)."""
    return [json.loads(line, parse_constant=strict) for line in out.splitlines() if line.strip()]


def test_json_has_one_object_per_policy_with_the_documented_metrics(capsys, prompt_file):
    rc, out, _ = simulate(
        capsys,
        "--prompts",
        str(prompt_file),
        "--policy",
        "fcfs,oracle",
        "--policy",
        "ltr",
        "--policy",
        "ssjf,hrrn",
        "--json",
    )
    assert rc == 0
    results = json_lines(out)
    assert [r["policy"] for r in results] == ["fcfs", "oracle", "ltr", "ssjf", "hrrn"]
    for r in results:
        for key in DISTRIBUTIONS:
            assert {"mean", "p50", "p90", "p99"} <= set(r[key]), key
            assert r[key]["p50"] <= r[key]["p90"] <= r[key]["p99"]
        assert r["completions"] == N and r["unfinished"] == 0
        assert r["throughput_rps"] > 0 and r["throughput_tps"] > r["throughput_rps"]
        assert isinstance(r["preemptions"], int) and r["preemptions"] >= 0
    # The same workload for all: the same tokens over each policy's own duration.
    tokens = {round(r["throughput_tps"] * r["duration_s"]) for r in results}
    assert len(tokens) == 1


def test_table_output(capsys, prompt_file):
    rc, out, _ = simulate(capsys, "--prompts", str(prompt_file), "--replicas", "2")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == f"{N} requests, arrivals burst, 2 replica(s), profile a100-llama3-8b"
    assert lines[1].split()[:3] == ["policy", "done", "e2e"]
    rows = [line.split() for line in lines[3:]]
    assert [row[:2] for row in rows] == [["fcfs", str(N)], ["oracle", str(N)]]  # default pair


def test_plot_writes_a_png(capsys, prompt_file, tmp_path):
    png = tmp_path / "plots" / "cdf.png"
    rc, _, err = simulate(
        capsys,
        "--prompts",
        str(prompt_file),
        "--policy",
        "fcfs,oracle",
        "--json",
        "--plot",
        str(png),
    )
    assert rc == 0 and f"wrote {png}" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_until_completions(capsys, prompt_file):
    rc, out, _ = simulate(
        capsys,
        "--prompts",
        str(prompt_file),
        "--policy",
        "fcfs,oracle",
        "--until-completions",
        "10",
        "--max-num-seqs",
        "4",
        "--json",
    )
    assert rc == 0
    fcfs, oracle = json_lines(out)
    for r in (fcfs, oracle):
        assert r["stopped_by"] == "until_completions" and r["completions"] >= 10
        assert r["unfinished"] == N - r["completions"]
        assert r["time_to_k_s"] == r["virtual_time_s"] > 0
    # Shortest first gets 10 answers out sooner: the LTR paper's synthetic-data use.
    assert oracle["time_to_k_s"] < fcfs["time_to_k_s"]
    rc, out, _ = simulate(
        capsys, "--prompts", str(prompt_file), "--policy", "oracle", "--until-completions", "10"
    )
    assert rc == 0 and "oracle: time to K answers" in out


def test_time_limit(capsys, prompt_file):
    rc, out, _ = simulate(
        capsys,
        "--prompts",
        str(prompt_file),
        "--policy",
        "fcfs",
        "--arrivals",
        "poisson:5",
        "--time-limit",
        "3",
        "--json",
    )
    assert rc == 0
    (r,) = json_lines(out)
    assert r["stopped_by"] == "time_limit" and r["virtual_time_s"] == 3.0
    assert 0 < r["completions"] < N and r["unfinished"] == N - r["completions"]
    assert r["duration_s"] == 3.0  # throughput over the whole window


def test_statistics_over_no_values_are_null(capsys, prompt_file):
    rc, out, _ = simulate(
        capsys, "--prompts", str(prompt_file), "--policy", "fcfs", "--time-limit", "0.001", "--json"
    )
    assert rc == 0
    (r,) = json_lines(out)
    assert r["completions"] == 0 and r["throughput_rps"] == 0.0
    assert all(r[key]["mean"] is None and r[key]["p99"] is None for key in DISTRIBUTIONS)


def test_slices_replicas_and_seed(capsys, prompt_file):
    args = [
        "--prompts",
        str(prompt_file),
        "--policy",
        "ltr",
        "--arrivals",
        "poisson:20",
        "--replicas",
        "3",
        "--slice-tokens",
        "16",
        "--starvation-threshold",
        "3",
        "--priority-quantum",
        "4",
        "--num-kv-blocks",
        "200",
        "--json",
    ]
    runs = []
    for seed in ("1", "1", "2"):
        rc, out, _ = simulate(capsys, *args, "--seed", seed)
        assert rc == 0
        (r,) = json_lines(out)
        assert r["completions"] == N and r["slices"] > 0
        r.pop("wall_time_s")
        runs.append(r)
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_a_promoted_slice_is_lengthened_unless_the_overhead_bound_is_off(capsys, prompt_file):
    """A request the starvation guard promotes runs `priority_quantum` tokens, lengthened until
    its resume's prefill is at most `--slice-max-overhead` of its engine time; `none` keeps the
    paper's fixed quantum: more, shorter slices."""
    args = ["--prompts", str(prompt_file), "--policy", "ltr", "--arrivals", "burst"]
    args += ["--max-num-seqs", "2", "--starvation-threshold", "3", "--priority-quantum", "4"]
    slices = {}
    for overhead in ("0.1", "none"):
        rc, out, _ = simulate(capsys, *args, "--slice-max-overhead", overhead, "--json")
        (r,) = json_lines(out)
        assert rc == 0 and r["completions"] == N
        slices[overhead] = r["slices"]
    assert 0 < slices["0.1"] < slices["none"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "fcfs,bogus"], "unknown policy 'bogus'"),
        (["--policy", "ltr"], "ltr policy needs a predictor score for"),
        (["--policy", "ssjf"], "ssjf policy needs a predicted output length for"),
        (["--profile", "tpu-v9"], "unknown step-time profile 'tpu-v9'"),
        (["--arrivals", "sometimes"], "sometimes"),
        (["--slice-max-overhead", "2"], "slice_max_overhead must be in (0, 1]"),
    ],
)
def test_errors_exit_2_with_a_clear_message(capsys, unscored_file, args, message):
    rc, out, err = simulate(capsys, "--prompts", str(unscored_file), *args)
    assert rc == 2 and out == ""
    assert err.startswith("rankserve simulate: error: ") and message in err
    assert "Traceback" not in err


def test_missing_prompt_file(capsys, tmp_path):
    rc, _, err = simulate(capsys, "--prompts", str(tmp_path / "none.jsonl"))
    assert rc == 2 and "no such prompt file" in err


def test_installed_console_script(prompt_file, tmp_path):
    assert RANKSERVE.is_file(), f"{RANKSERVE} missing: pip install -e . --no-deps"
    proc = subprocess.run(
        [
            str(RANKSERVE),
            "simulate",
            "--prompts",
            str(prompt_file),
            "--policy",
            "fcfs,ssjf",
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["policy"] for r in json_lines(proc.stdout)] == ["fcfs", "ssjf"]
    bad = subprocess.run(
        [str(RANKSERVE), "simulate", "--policy", "nope", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert bad.returncode == 2 and "unknown policy 'nope'" in bad.stderr


def test_sanity_bar_oracle_beats_fcfs_on_the_demo_prompts(capsys):
    rc, out, _ = simulate(capsys, "--policy", "fcfs,oracle", "--true-lengths", "--json")
    assert rc == 0
    fcfs, oracle = json_lines(out)
    assert fcfs["completions"] == oracle["completions"] == 300
    assert oracle["per_token_latency_s"]["mean"] < fcfs["per_token_latency_s"]["mean"]


def test_routing_baseline_runs_on_the_same_workload(capsys, prompt_file):
    rc, out, _ = simulate(
        capsys, "--prompts", str(prompt_file), "--replicas", "3", "--routing", "power_of_two"
    )
    assert rc == 0
    assert out.splitlines()[0].endswith(", routing power_of_two")
    rows = [line.split() for line in out.splitlines()[3:]]
    assert [row[:2] for row in rows] == [["fcfs", str(N)], ["oracle", str(N)]]


def test_slo_unreachable_refuses_or_demotes(capsys, prompt_file):
    args = [
        "--prompts",
        str(prompt_file),
        "--policy",
        "fcfs",
        "--arrivals",
        "poisson:20",
        "--max-num-seqs",
        "2",
        "--slo-class",
        "tight:e2e_s=2",
        "--slo-class",
        "bulk:e2e_s=100000",
        "--json",
    ]
    runs = {}
    for mode in ("off", "reject", "demote"):
        rc, out, _ = simulate(capsys, *args, "--slo-unreachable", mode, "--slo-best-effort", "bulk")
        assert rc == 0
        (runs[mode],) = json_lines(out)
    off, reject, demote = runs["off"], runs["reject"], runs["demote"]
    assert "shed" not in off and "slo_demoted" not in off and off["completions"] == N
    refused = reject["shed"]["slo_unreachable"]
    assert 0 < refused < N and reject["completions"] == N - refused
    assert demote["completions"] == N and "shed" not in demote
    assert 0 < demote["slo_demoted"] < N and demote["slo_classes"]["bulk"]["requests"] > 0
    rc, out, _ = simulate(capsys, *args[:-1], "--slo-unreachable", "reject")
    assert rc == 0 and f"fcfs: shed by admission control slo_unreachable {refused}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slo-unreachable", "demote"], "needs admission.best_effort_class"),
        (
            ["--slo-unreachable", "demote", "--slo-best-effort", "bulk"],
            "best_effort_class: unknown SLO class 'bulk'; known: default",
        ),
    ],
)
def test_slo_unreachable_setting_errors(capsys, prompt_file, args, message):
    rc, out, err = simulate(capsys, "--prompts", str(prompt_file), *args)
    assert rc == 2 and out == "" and message in err
