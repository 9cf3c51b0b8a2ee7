"""The service's own log lines (runbooks/operating.md): every line of the ingress, the scheduler
actor, the engine replicas and the predictor says when (UTC, ms), how bad, which part and which
instance of it (`ingress[<ingress id>]`, `replica[replica-0]`), and which request (`-` for none);
as text or as one JSON object a line (`logging.format: json`, `--log-format json`).

Each actor calls `configure_logging` from its `__init__`. Why it is needed: in a Ray worker
nothing configures the root logger, so our loggers inherit Python's WARNING level and Ray
shows only WARNING and above, bare. Here our package loggers get their own level and one
handler on stderr (which Ray writes to the worker's log file and forwards to the driver), and
stop propagating (so no other handler prints them twice).

The request id comes from the `request_id` of a line's `extra`, else from the request the
current task serves (`bind_request`, a context variable: each request runs in its own task).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PACKAGES = ("cluster", "serve_app", "predictor_actor")  # our loggers; not Ray's, not vLLM's
NO_REQUEST = "-"

_REQUEST: ContextVar[str] = ContextVar("rankserve_request_id", default=NO_REQUEST)


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "text"  # text | json
    level: str = "INFO"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"logging.format must be one of {', '.join(FORMATS)}")
        if self.level.upper() not in LEVELS:
            raise ValueError(f"logging.level must be one of {', '.join(LEVELS)}")


def bind_request(request_id: str) -> None:
    """The lines the current task logs from now on are about `request_id`."""
    _REQUEST.set(request_id)


class _Context(logging.Filter):
    """Stamps each record with the part, its instance and the request."""

    def __init__(self, component: str, instance: str) -> None:
        super().__init__()
        self.component = component
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        record.component = self.component
        record.instance = self.instance
        if not getattr(record, "request_id", None):
            record.request_id = _REQUEST.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record)} {record.levelname} {record.component}[{record.instance}] "
            f"{record.request_id} {record.name}: {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "component": record.component,
            "replica": record.instance,
            "request_id": record.request_id,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(config: LogConfig, component: str, instance: str) -> logging.Handler:
    """This process's lines of our packages, stamped as `component[instance]`, at
    `config.level`, to stderr. Again in the same process: replaces the previous set-up.
    Returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("rankserve")
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    handler.addFilter(_Context(component, instance))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "rankserve"]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(config.level.upper())
        logger.propagate = False
    return handler
