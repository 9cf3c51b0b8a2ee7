"""Write a benchmark's measured figures into its own section of docs/benchmarks.md.

Each benchmark owns one section, marked by HTML comments, so that benchmarks run separately (and
concurrently) never overwrite each other's figures.
"""

from __future__ import annotations

import fcntl
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every figure here was measured by the command shown above it; each section is rewritten by\n"
    "its benchmark when it runs. Machine: 2 CPU cores, 24 GiB RAM, no GPU, unless said otherwise.\n"
)


def command_line() -> str:
    """How this benchmark was started, as a reader would type it from the repository root."""
    script = Path(sys.argv[0])
    start = (
        f"python -m benchmarks.{script.stem}" if script.parent.name == "benchmarks" else script.name
    )
    return " ".join([start, *(shlex.quote(a) for a in sys.argv[1:])])


def update_section(name: str, body: str, command: str | None = None, doc: Path = DOC) -> None:
    """Replace (or append) section `name` of the benchmarks doc with `body`."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = command if command is not None else command_line()
    block = f"{begin}\n_Measured {stamp} with:_\n\n```\n{cmd}\n```\n\n{body.rstrip()}\n{end}"
    doc.parent.mkdir(parents=True, exist_ok=True)
    with open(doc.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = doc.read_text() if doc.exists() else HEADER
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = head + block + tail
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        doc.write_text(text)
