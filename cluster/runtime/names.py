"""The names rankserve's actors go by in Ray (so that every part, and an operator's
`ray list actors`, finds them). No Ray import: the serving app's config reads these."""

NAMESPACE = "rankserve"
SCHEDULER_ACTOR = "rankserve-scheduler"
PREDICTOR_ACTOR = "rankserve-predictor"


REPLICA_PREFIX = "rankserve-"


def replica_actor_name(replica_id: str) -> str:
    return f"{REPLICA_PREFIX}{replica_id}"


def replica_id_of(actor_name: str) -> str | None:
    """The replica id of an engine replica actor's name; None for other actors' names."""
    rest = actor_name.removeprefix(REPLICA_PREFIX)
    return rest if rest != actor_name and rest.startswith("replica-") else None
