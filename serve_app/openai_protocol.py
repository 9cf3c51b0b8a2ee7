"""The OpenAI-compatible wire format: request bodies (validated), response and stream-chunk
bodies, and OpenAI-style errors. No serving logic here."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_STOP = 16  # stop strings a request may give (each is checked at every step)


class APIError(Exception):
    """An error the client caused (or a missing model): HTTP status, OpenAI error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type_
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def short(text: str, limit: int = 300) -> str:
    """An internal error's text as a client may see it: its first line, bounded (a Ray error's
    text carries a traceback with paths, pids and addresses)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def model_not_found(name: str) -> APIError:
    return APIError(
        f"The model `{name}` does not exist.",
        404,
        "invalid_request_error",
        "model",
        "model_not_found",
    )


class _Body(BaseModel):
    # Unknown OpenAI fields (logprobs, penalties, ...) are accepted and ignored, as most
    # OpenAI-compatible servers do; the fields we use are strictly typed.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**64)  # what the engines' generators take
    user: str | None = None
    # vLLM's extension: keep generating past end-of-sequence (benchmarks force true lengths).
    ignore_eos: bool = False
    # rankserve's extensions (kept on the request for SLO-aware policies).
    slo: str | None = None
    tenant: str | None = None
    priority: int | None = Field(None, ge=-(2**31), lt=2**31)

    @field_validator("stop")
    @classmethod
    def _stops_are_text(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if any(not s for s in stops):
            raise ValueError("a stop string cannot be empty")
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return stop

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionBody(_Body):
    prompt: str | list[int]
    # JSON numbers: accept 1 for 1.0 and so on (strict mode would refuse ints for floats).
    temperature: float = Field(1.0, ge=0.0, le=2.0, strict=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, strict=False)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError("only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0, strict=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, strict=False)


def parse_body(raw: bytes, model: type[_Body]) -> _Body:
    """Parse and validate a JSON body, turning every problem into a 400 APIError."""
    return validate_dict(load_json(raw), model)


def load_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(f"The request body is not valid JSON: {e}") from None
    except RecursionError:  # the parser's own bound, far above serve_app.limits' depth limit
        raise APIError("The request body is nested too deeply.", code="too_deeply_nested") from None
    if not isinstance(data, dict):
        raise APIError("The request body must be a JSON object.")
    return data


def validate_dict(data: dict[str, Any], model: type[_Body]) -> _Body:
    try:
        body = model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not _is_type_tag(p)) or None
        raise APIError(f"Invalid field '{param}': {first['msg']}", param=param) from None
    if body.n != 1:
        raise APIError("Only n=1 is supported.", param="n")
    return body


def _is_type_tag(part: object) -> bool:
    """Pydantic puts the union member tried into an error's location ("prompt.str")."""
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "dict") or "[" in part
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(
    rid: str, model: str, text: str, finish: str | None, prompt_tokens: int, n_tokens: int
) -> dict[str, Any]:
    return {**completion_chunk(rid, model, text, finish), "usage": usage(prompt_tokens, n_tokens)}


def completion_chunk(rid: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def chat_response(
    rid: str, model: str, text: str, finish: str | None, prompt_tokens: int, n_tokens: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage(prompt_tokens, n_tokens),
    }


def chat_chunk(rid: str, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(rid: str, model: str, obj: str, prompt_tokens: int, n: int) -> dict[str, Any]:
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, n),
    }


def sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


async def send_error(send: Callable[..., Any], error: APIError) -> None:
    """Answer an ASGI request with `error` as an OpenAI-style JSON body."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def sse_error(error: APIError) -> str:
    """The event that ends a stream that cannot go on (OpenAI clients raise on it)."""
    return f"event: error\n{sse(error.body())}"


def models_list(name: str, created: int, max_model_len: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "rankserve",
                "max_model_len": max_model_len,
            }
        ],
    }
