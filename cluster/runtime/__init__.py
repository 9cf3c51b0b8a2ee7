"""The Ray and vLLM side of the cluster: thin adapters that host the pure scheduling core
(`cluster.scheduler`) in a live Ray cluster. Everything that imports Ray or vLLM lives here;
the rest of `cluster/` never imports this package (an import-linter contract, run by the tests,
says so).

    protocol.py         wire types between ingress, scheduler actor and replicas; Engine
    spec.py             what one replica is: its config, Ray resources and environment
    engines/            one file per engine behind the Engine protocol (vllm, simulated)
    replica.py          the engine replica actor
    fleet.py            the replica fleet: start or reattach, health, replace, scale
    scheduler_actor.py  the scheduler actor: hosts the core, hands out tickets, survives death
    leases.py           ingress leases: requests of an ingress that died are aborted
    names.py            the actors' names in Ray
    status.py           what the scheduler actor reports about the cluster
"""
