"""The engines a replica can host, behind `cluster.runtime.protocol.Engine`: one line here
registers one. Imported on first use, so that naming them does not import vLLM."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.registry import Registry

if TYPE_CHECKING:
    from cluster.runtime.protocol import Engine

ENGINES: Registry[type[Engine]] = Registry(
    "engine",
    {
        "vllm": "cluster.runtime.engines.vllm:VllmEngine",
        "simulated": "cluster.runtime.engines.simulated:SimulatedRealtimeEngine",
    },
)
