"""Input limits, each checked before the work it protects: the size of the headers and the body
and the content type before the body is read, the nesting and the text of the JSON before it is
validated, and the prompt's length in characters before it is tokenized. Every refusal is an
OpenAI-style APIError naming what was too much."""

from __future__ import annotations

import math
import re
from typing import Any

from serve_app.openai_protocol import APIError

# A lone UTF-16 surrogate (JSON "\ud800") is valid JSON but no text: tokenizers fail on it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_headers(headers: list[tuple[bytes, bytes]], max_bytes: int) -> None:
    size = sum(len(name) + len(value) for name, value in headers)
    if size > max_bytes:
        raise APIError(
            f"The request headers are {size} bytes; the limit is {max_bytes}.",
            431,
            code="headers_too_large",
        )


def check_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        got = f"'{media}'" if media else "none"
        raise APIError(
            f"The request body must be JSON (Content-Type: application/json); got {got}.",
            415,
            code="unsupported_media_type",
        )


def too_large(size: int | str, max_bytes: int) -> APIError:
    return APIError(
        f"The request body is {size} bytes; the limit is {max_bytes}.",
        413,
        code="request_too_large",
    )


def check_content_length(value: str | None, max_bytes: int) -> None:
    """A declared length over the limit is refused before a byte of the body is read (a body
    without one is counted as it arrives)."""
    if value is None:
        return
    if not value.strip().isdigit():
        raise APIError("The Content-Length header is not a number.", code="bad_content_length")
    if int(value) > max_bytes:
        raise too_large(int(value), max_bytes)


def check_json(data: Any, max_depth: int) -> None:
    """Nesting at most `max_depth` deep and text only (no lone surrogate), in one pass that
    names the field at fault."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise _bad_text(path)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > max_depth:
            raise APIError(
                f"The request body is nested more than {max_depth} levels deep.",
                param=path or None,
                code="too_deeply_nested",
            )
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _SURROGATE.search(key):
                raise _bad_text(where)
            stack.append((item, depth + 1, where))


def _bad_text(path: str) -> APIError:
    return APIError(
        f"Invalid field '{path}': the text holds a lone UTF-16 surrogate (not valid Unicode).",
        param=path or None,
        code="invalid_unicode",
    )


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of this vocabulary stands for. A byte-level BPE token's
    string has one character per byte, and a SentencePiece piece one per character, so each
    token string is at least as long as the text it decodes to."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1)


def check_prompt_chars(
    chars: int, max_model_len: int, chars_per_token: int, param: str = "prompt"
) -> None:
    """Refuse, before tokenizing, a prompt that cannot fit whatever max_tokens is: it takes at
    least chars / chars_per_token tokens, and the answer at least one."""
    least = math.ceil(chars / chars_per_token)
    if least > max_model_len - 1:
        raise APIError(
            f"This model's maximum context length is {max_model_len} tokens. However, the "
            f"prompt's {chars} characters are at least {least} tokens. Please reduce the prompt.",
            param=param,
            code="context_length_exceeded",
        )
