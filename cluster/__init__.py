"""Cluster side of rankserve. The scheduling core (request life cycle, policies, routing, the
Scheduler, metrics), the simulator (`sim/`) and workloads (`workload/`) are plain Python with no
Ray or vLLM import; `runtime/` holds the Ray and vLLM adapters that host the core live."""
