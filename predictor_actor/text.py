"""Prompt text as the predictor sees it: cleaned of what would break a tokenizer, and chat
conversations flattened into one prompt (several turns are scored as one conversation)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Prompts longer than this many characters per token of truncation are cut before tokenizing:
# truncation keeps only the first `max_length` tokens anyway, and a token rarely spans fewer
# than one character, so the cut never changes the encoding but bounds a huge prompt's cost.
CHARS_PER_TOKEN_BOUND = 16
_UNENCODABLE = re.compile("[\ud800-\udfff\x00]")


def clean_prompt(prompt: object) -> str:
    """A str that any tokenizer accepts: bytes are decoded (invalid UTF-8 replaced), lone
    surrogates and NUL characters replaced, None becomes the empty prompt."""
    if prompt is None:
        return ""
    if isinstance(prompt, bytes | bytearray):
        text = bytes(prompt).decode("utf-8", errors="replace")
    elif isinstance(prompt, str):
        text = prompt
    else:
        text = str(prompt)
    # A str may hold lone surrogates (e.g. from json.loads of "\ud800") that cannot be encoded.
    return _UNENCODABLE.sub("\ufffd", text)


def cut_for_encoding(text: str, max_length: int) -> str:
    """The prefix of `text` that can hold the first `max_length` tokens."""
    limit = max_length * CHARS_PER_TOKEN_BOUND
    return text if len(text) <= limit else text[:limit]


def conversation_prompt(messages: Iterable[Mapping[str, object]]) -> str:
    """One prompt for a multi-turn chat: each message on its own lines as `role: content`.

    The serving path scores chat requests, and logs them for training, through this one
    function, so that training and serving see the same text.
    """
    parts = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        parts.append(f"{msg.get('role', 'user')}: {clean_prompt(content)}")
    return "\n".join(parts)
