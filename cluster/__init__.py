"""Cluster side of rankserve: the scheduling core (no Ray or vLLM imports), the simulator,
and the thin Ray/vLLM adapters that host the core in a live cluster."""
