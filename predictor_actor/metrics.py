"""The predictor actor's metrics (docs/metrics.md), from its health: the actor publishes them
through Ray's metrics API, and the ingress's GET /metrics renders them from the same health."""

from __future__ import annotations

from cluster.runtime.metrics_export import COUNTER, GAUGE, Family

# health() key -> (metric, kind, help)
_FIGURES = (
    ("batches", "rankserve_predictor_batches", COUNTER, "Batches scored"),
    ("prompts", "rankserve_predictor_prompts", COUNTER, "Prompts scored"),
    ("busy_seconds", "rankserve_predictor_busy_seconds", COUNTER, "Time spent scoring batches"),
    (
        "failed_batches",
        "rankserve_predictor_failed_batches",
        COUNTER,
        "Batches that failed and were scored prompt by prompt",
    ),
    (
        "heuristic_prompts",
        "rankserve_predictor_heuristic_prompts",
        COUNTER,
        "Prompts the predictor scored by the prompt-length heuristic",
    ),
    ("largest_batch", "rankserve_predictor_largest_batch", GAUGE, "Largest batch so far"),
    (
        "recent_mean_batch_size",
        "rankserve_predictor_recent_mean_batch_size",
        GAUGE,
        "Mean size of the last 1,000 batches",
    ),
    ("fallback", "rankserve_predictor_model_fallback", GAUGE, "1 if the model did not load"),
)


def predictor_families(health: dict) -> list[Family]:
    fams = [Family(name, kind, help).add(health[key]) for key, name, kind, help in _FIGURES]
    events = Family(
        "rankserve_predictor_learning_events",
        COUNTER,
        "Retrain outcomes (swap, refused, failed) and rollbacks, by served model",
        ("model", "event"),
    )
    versions = Family(
        "rankserve_predictor_examples", GAUGE, "Labelled examples learned from", ("model",)
    )
    encoding = Family(
        "rankserve_predictor_encoding", GAUGE, "1 for the encoder's precision in use", ("encoding",)
    )
    if health.get("encoding"):
        encoding.add(1, health["encoding"])
    for model, learner in ((health.get("learning") or {}).get("models") or {}).items():
        for event, n in sorted(learner.get("event_counts", {}).items()):
            events.add(n, model, event)
        versions.add(learner["examples"], model)
    return [*fams, encoding, events, versions]
