"""A client of the live service, as the fault tests drive it: streamed completions of forced
lengths, and the check that each came whole (every token, once, and [DONE], no error)."""

from __future__ import annotations

import asyncio
import json

MODEL = "rankserve-tiny-llama"


async def stream(client, max_tokens: int, prompt: str = "tell me") -> dict:
    """One streamed completion: its token count, whether it ended with [DONE], its errors."""
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out = {"tokens": None, "done": False, "errors": [], "id": None, "first": asyncio.Event()}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    out["errors"].append(event["error"])
                    continue
                out["id"] = event["id"]
                out["first"].set()
                if event.get("usage"):
                    out["tokens"] = event["usage"]["completion_tokens"]
    return out


def assert_whole(results: list[dict], lengths: list[int]) -> None:
    for res, n in zip(results, lengths, strict=True):
        assert res["errors"] == [], res["errors"]
        assert res["done"] and res["tokens"] == n, (res, n)
