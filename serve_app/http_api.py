"""The ingress's FastAPI app and its OpenAPI document (`GET /openapi.json`, behind the key).

The generation routes read their body themselves (limits, then validation off the event loop:
serve_app/request_input.py), so FastAPI would document them with no body at all. The document
is completed here from the same pydantic models that validate the bodies, with the bearer key
and the OpenAI-style error body every refusal has: clients and fuzzers (tests/e2e, schemathesis)
see what the service really takes and answers. No /docs or /redoc: they load from a CDN.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from ray import serve

from serve_app import openai_protocol as oa
from serve_app.front_door import OPEN_PATHS, FrontDoor, FrontDoorMiddleware

_REF = "#/components/schemas/{model}"
BODIES: dict[str, type[oa._Body]] = {
    "/v1/completions": oa.CompletionBody,
    "/v1/chat/completions": oa.ChatBody,
}
# Every refusal the front door, the validation and admission control make (serve_app/limits.py,
# openai_protocol.py, ingress.py); 503 when the scheduler is away.
ERROR_STATUSES = {
    "400": "Invalid request (the field is named in error.param)",
    "401": "No API key, or a wrong one",
    "404": "No such model",
    "408": "Dropped at its queue deadline",
    "413": "Request body over the limit",
    "415": "Body not JSON (Content-Type: application/json)",
    "429": "Admission control: queue full, or SLO out of reach (Retry-After)",
    "431": "Request headers over the limit",
    "503": "Scheduler unavailable",
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _replica_front_door() -> FrontDoor:
    return serve.get_replica_context().servable_object.front_door


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document of `app` with the request bodies, the key and the errors added."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)  # fmt: skip
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            if path not in OPEN_PATHS:
                operation["security"] = [{"bearer": []}]
            for status, why in ERROR_STATUSES.items():
                operation["responses"][status] = {"description": why, **error}
    for path, model in BODIES.items():
        body = model.model_json_schema(ref_template=_REF)
        schemas.update(body.pop("$defs", {}))
        schemas[model.__name__] = body
        ref = {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        operation = doc["paths"][path]["post"]
        operation["requestBody"] = {"required": True, "content": {"application/json": ref}}
        # "stream": true answers Server-Sent Events.
        operation["responses"]["200"]["content"]["text/event-stream"] = {"schema": {}}
    return doc


def make_app() -> FastAPI:
    app = FastAPI(
        title="rankserve",
        description="OpenAI-compatible LLM serving with global ranking",
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(FrontDoorMiddleware, resolve=_replica_front_door)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
