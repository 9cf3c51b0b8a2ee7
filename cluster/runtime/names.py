"""The names rankserve's actors go by in Ray (so that every part, and an operator's
`ray list actors`, finds them). No Ray import: the serving app's config reads these."""

NAMESPACE = "rankserve"
SCHEDULER_ACTOR = "rankserve-scheduler"
PREDICTOR_ACTOR = "rankserve-predictor"


def replica_actor_name(replica_id: str) -> str:
    return f"rankserve-{replica_id}"
