"""`rankserve simulate --json` on a fixed matrix of workloads and settings, against the output
recorded in tests/data/simulate_golden.jsonl: the check that a refactoring changed no
scheduling decision.

    python -m benchmarks.simulate_golden            # compare; exit 1 and name what differs
    python -m benchmarks.simulate_golden --write    # record the current output as the golden

Every policy runs in every case, with and without slices; the Azure cases need
../shared/datasets (skipped without it). `wall_time_s` is the only key left out: it is the
simulator's own run time, not a result.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "simulate_golden.jsonl"
AZURE_CONV = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "datasets"
    / "azure_llm_inference_2023"
    / "AzureLLMInferenceTrace_conv.csv"
)
ALL_POLICIES = "fcfs,oracle,ltr,ssjf,hrrn"  # those the golden was recorded with
UNSTABLE_KEYS = ("wall_time_s",)
# Output fields added after the golden was recorded (issue 12: SLO attainment and goodput,
# computed from the same timings): left out of the comparison, so that it still checks every
# scheduling decision and figure the golden holds. Their values are tested on their own.
ADDED_KEYS = ("slo_attainment", "goodput_rps", "slo_classes")


def cases() -> dict[str, list[str]]:
    """Case name -> `rankserve simulate` arguments (besides --json and --no-progress)."""
    demo = ["--policy", ALL_POLICIES, "--true-lengths"]
    azure = [
        "--arrivals",
        f"trace:{AZURE_CONV}",
        "--lengths-from-trace",
        "--target-rate",
        "30",
        "-n",
        "3000",
        "--replicas",
        "4",
        "--max-num-seqs",
        "32",
        "--policy",
        ALL_POLICIES,
        "--true-lengths",
    ]
    out = {
        "demo-burst": demo,
        "demo-poisson-2-replicas": [
            *demo,
            "--arrivals",
            "poisson:40",
            "-n",
            "600",
            "--replicas",
            "2",
            "--max-num-seqs",
            "8",
        ],
        "demo-burst-small-kv": [*demo, "--num-kv-blocks", "300", "--max-num-seqs", "64"],
        "demo-burst-power-of-two": [
            *demo,
            "--replicas",
            "3",
            "--max-num-seqs",
            "16",
            "--routing",
            "power_of_two",
            "--seed",
            "3",
        ],
        "demo-burst-mixed-profiles": [
            *demo,
            "--replicas",
            "2",
            "--profile",
            "a100-llama3-8b,h100-llama3-8b",
            "--max-num-seqs",
            "16",
        ],
        "demo-burst-starvation": [
            *demo,
            "--max-num-seqs",
            "4",
            "--starvation-threshold",
            "5",
            "--priority-quantum",
            "3",
        ],
        "demo-burst-predictor": [
            "--policy",
            "fcfs,ltr,ssjf,hrrn",
            "--predictor",
            "default",
            "--max-num-seqs",
            "16",
        ],
        "demo-until-k": [*demo, "--until-completions", "100"],
        "demo-time-limit": [*demo, "--time-limit", "2.5"],
        "azure-conv": azure,
    }
    for name in list(out):
        out[f"{name}-sliced"] = [*out[name], "--slice-tokens", "32"]
    return out


def needs_shared(name: str) -> bool:
    return name.startswith("azure")


def run_case(args: list[str]) -> list[dict]:
    from serve_app.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["simulate", *args, "--json", "--no-progress"])
    if code != 0:
        raise RuntimeError(f"rankserve simulate {' '.join(args)} exited {code}")
    rows = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    for row in rows:
        for key in UNSTABLE_KEYS + ADDED_KEYS:
            row.pop(key, None)
    return rows


def read_golden() -> dict[str, list[dict]]:
    golden: dict[str, list[dict]] = {}
    for line in GOLDEN.read_text().splitlines():
        entry = json.loads(line)
        golden[entry["case"]] = entry["rows"]
    return golden


def canonical(rows: list[dict]) -> str:
    return json.dumps(rows, sort_keys=True, allow_nan=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="record the current output")
    p.add_argument("--case", action="append", help="only these cases")
    args = p.parse_args(argv)
    wanted = {k: v for k, v in cases().items() if not args.case or k in args.case}
    have_shared = AZURE_CONV.is_file()
    if args.write:
        if not have_shared:
            print("refusing to write the golden without ../shared (Azure cases)", file=sys.stderr)
            return 2
        # --case re-records those cases and keeps the others as they were
        recorded = read_golden() if args.case else {}
        for name, case_args in wanted.items():
            recorded[name] = run_case(case_args)
            print(f"recorded {name}", file=sys.stderr)
        with GOLDEN.open("w") as f:
            for name in cases():
                if name in recorded:
                    f.write(json.dumps({"case": name, "rows": recorded[name]}) + "\n")
        return 0
    golden = read_golden()
    differ = []
    for name, case_args in wanted.items():
        if needs_shared(name) and not have_shared:
            print(f"skip {name} (no ../shared)", file=sys.stderr)
            continue
        same = canonical(run_case(case_args)) == canonical(golden[name])
        print(f"{'same' if same else 'DIFFERS'}  {name}", file=sys.stderr)
        if not same:
            differ.append(name)
    if differ:
        print(f"{len(differ)} case(s) differ: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
