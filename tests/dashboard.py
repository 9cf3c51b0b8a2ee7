"""The Grafana dashboard in k8s/grafana/: its panels and the metrics their queries read (the
dashboard tests check those against docs/metrics.md and a live scrape)."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "k8s" / "grafana" / "rankserve-dashboard.json"
_METRIC = re.compile(r"\b(?:rankserve_|vllm:)[a-zA-Z0-9_:]+")


def panels(path: Path = DASHBOARD) -> list[dict]:
    """The dashboard's panels that query (rows left out)."""
    return [p for p in json.loads(path.read_text())["panels"] if p["type"] != "row"]


def metrics_named(expr: str) -> set[str]:
    """The rankserve and vLLM metric names a PromQL query reads."""
    return set(_METRIC.findall(expr))


def dashboard_metrics(path: Path = DASHBOARD) -> set[str]:
    return {m for p in panels(path) for t in p["targets"] for m in metrics_named(t["expr"])}
