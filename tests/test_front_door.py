"""The front door, without a cluster: API keys (settings, environment, a key file that rotates),
the HTTP checks of FrontDoorMiddleware on a real ASGI app (401, 413, 415, 431, /health open),
gRPC metadata keys, and binding Serve's gRPC proxy to the host."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("starlette")

from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from serve_app.auth import APIKeys, bearer_token  # noqa: E402
from serve_app.config import AuthSettings, LimitSettings, ServeConfig  # noqa: E402
from serve_app.front_door import FrontDoor, FrontDoorMiddleware  # noqa: E402
from serve_app.grpc_bind import bind_address  # noqa: E402


def keys(environ=None, **settings) -> APIKeys:
    return APIKeys(AuthSettings(**settings), environ or {})


def test_no_key_configured_is_open_and_says_so():
    open_ = keys()
    assert not open_.enabled and open_.valid(None) and open_.valid("anything")
    assert "open" in open_.describe()


def test_keys_from_settings_and_environment_all_work():
    k = keys({"RANKSERVE_API_KEYS": " env-1 , env-2,"}, api_keys=("set-1",))
    assert k.enabled
    assert all(k.valid(key) for key in ("set-1", "env-1", "env-2"))
    assert not any(k.valid(key) for key in (None, "", "set-2", "env-1 ", "ENV-1", "set"))
    assert "set-1" not in repr(AuthSettings(api_keys=("set-1",)))  # never in a log line


def test_a_key_file_rotates_without_restart(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# rotated monthly\nold-key\n\n")
    k = keys(api_key_file=str(path))
    assert k.valid("old-key") and not k.valid("new-key") and not k.valid("# rotated monthly")
    path.write_text("old-key\nnew-key\n")  # add the new key, move the clients ...
    assert k.valid("old-key") and k.valid("new-key")
    path.write_text("new-key\n")  # ... then drop the old one
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a coarse clock
    assert k.valid("new-key") and not k.valid("old-key")
    path.unlink()  # unreadable mid-rotation: the last keys stay
    assert k.valid("new-key")


def test_an_empty_key_file_lets_nobody_in_and_a_missing_one_fails_at_start(tmp_path):
    path = tmp_path / "keys"
    path.write_text("")
    k = keys(api_key_file=str(path))
    assert k.enabled and not k.valid("") and not k.valid("x")
    with pytest.raises(FileNotFoundError):
        keys(api_key_file=str(tmp_path / "absent"))


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer_token(header, key):
    assert bearer_token(header) == key


def test_settings_from_the_app_arguments():
    cfg = ServeConfig.from_dict(
        {"model": "m", "auth.api_keys": "a,b", "limits": {"max_body_bytes": "1024"}}
    )
    assert cfg.auth.api_keys == ("a", "b") and cfg.limits.max_body_bytes == 1024
    assert cfg.limits.max_json_depth == 32 and cfg.auth.api_key_file is None
    with pytest.raises(ValueError, match="max_body_bytes"):
        ServeConfig.from_dict({"model": "m", "limits.max_body_bytes": 0})


LIMITS = LimitSettings(max_body_bytes=1000, max_header_bytes=2000)


@pytest.fixture
def client():
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    door = FrontDoor(keys(api_keys=("k1",)), LIMITS)
    app = Starlette(  # as the ingress adds it to its FastAPI app
        routes=[Route("/v1/completions", echo, methods=["POST"]), Route("/health", health)],
        middleware=[Middleware(FrontDoorMiddleware, resolve=lambda: door)],
    )
    with TestClient(app) as c:
        yield c


AUTH = {"authorization": "Bearer k1"}


def test_http_key_checks(client):
    assert client.get("/health").status_code == 200  # liveness needs no key
    for headers in ({}, {"authorization": "Bearer k2"}, {"authorization": "k1"}):
        r = client.post("/v1/completions", json={}, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
        assert "k1" not in r.text and "k2" not in r.text
    r = client.post("/v1/completions", json={"a": 1}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"bytes": len(b'{"a":1}')}


def test_content_type_must_be_json(client):
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = {**AUTH, **({"content-type": content_type} if content_type else {})}
        r = client.post("/v1/completions", content=b"{}", headers=headers)
        assert r.status_code == 415, content_type
        assert r.json()["error"]["code"] == "unsupported_media_type"
    headers = {**AUTH, "content-type": "application/json; charset=utf-8"}
    assert client.post("/v1/completions", content=b"{}", headers=headers).status_code == 200


def test_body_and_header_limits(client):
    json_auth = {**AUTH, "content-type": "application/json"}
    ok = client.post("/v1/completions", content=b"x" * 1000, headers=json_auth)
    assert ok.status_code == 200 and ok.json() == {"bytes": 1000}
    r = client.post("/v1/completions", content=b"x" * 1001, headers=json_auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(30):
            yield b"x" * 100

    r = client.post("/v1/completions", content=chunks(), headers=json_auth)
    assert r.status_code == 413, r.text
    r = client.post("/v1/completions", json={}, headers={**AUTH, "x-big": "y" * 3000})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"


class _GrpcContext:
    def __init__(self, metadata):
        self._metadata = metadata

    def invocation_metadata(self):
        return self._metadata

    def peer(self):
        return "ipv4:127.0.0.1:5555"


def test_grpc_metadata_keys():
    door = FrontDoor(keys(api_keys=("k1",)), LIMITS)
    door.check_grpc(_GrpcContext([("application", "rankserve"), ("authorization", "Bearer k1")]))
    for metadata in ([], [("authorization", "Bearer nope")], [("application", "k1")]):
        with pytest.raises(Exception) as info:
            door.check_grpc(_GrpcContext(metadata))
        assert info.value.status == 401 and info.value.type == "authentication_error"
    FrontDoor(keys(), LIMITS).check_grpc(_GrpcContext([]))  # open: no key needed


def test_grpc_bind_address():
    assert bind_address("[::]:9000", "127.0.0.1") == "127.0.0.1:9000"
    assert bind_address("[::]:9000", "::1") == "[::1]:9000"
    assert bind_address("[::]:9000", "0.0.0.0") == "0.0.0.0:9000"


def test_the_openapi_document_has_the_bodies_the_key_and_the_errors():
    """What /openapi.json serves (and the fuzzers of tests/e2e/vllm read): each generation
    route's body from the model that validates it; the key on every route but /health."""
    pytest.importorskip("ray")
    from serve_app.http_api import ERROR_STATUSES
    from serve_app.ingress import api  # its routes are the deployment's methods

    doc = api.openapi()
    assert api.openapi() is doc  # built once
    schemas = doc["components"]["schemas"]
    for path, model in (
        ("/v1/completions", "CompletionBody"),
        ("/v1/chat/completions", "ChatBody"),
    ):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert ref == {"$ref": f"#/components/schemas/{model}"}
        assert "model" in schemas[model]["required"]
    assert schemas["ChatBody"]["properties"]["messages"]["items"]["$ref"].endswith("ChatMessage")
    assert schemas["Error"]["properties"]["error"]["required"] == ["message", "type"]
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            assert ("security" in operation) == (path != "/health"), path
            assert set(ERROR_STATUSES) <= set(operation["responses"]), path
