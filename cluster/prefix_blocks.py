"""Which KV blocks of a request are the same as another's: the identity prefix caching works on,
shared by the simulated engine's cache (cluster.sim.kv_cache) and the scheduler's estimate of
each replica's cache (cluster.prefix_index), so that both count the same hits.

A full block is known by what it holds. vLLM hashes each full block of the prompt with the hash
of the block before it, so one hash names the whole prefix up to that block: two requests share
block i exactly when they share every block up to i. A request can carry such hashes
(`Request.block_hashes`): the ingress computes them from the prompt's token ids
(`token_block_hashes`, at its configured block size, which any replica block size that is a
multiple of it can use: `Request.hash_block_size`), the simulator from a Mooncake trace's
`hash_ids` (`TraceBlocks`, at the engines' block size). Without them, a prompt block is `(prefix_key, index)` (the simulator keys by
prompt text: only identical prompts share), and any other block, generated tokens included, is
`(request_id, index)`: only the same request finds it again when it resumes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import overload

from cluster.request import Request

BlockKey = tuple[Hashable, int]

# Tokens per hash id in the Mooncake traces (FAST'25 release README).
TRACE_BLOCK_TOKENS = 512


def block_key(request: Request, index: int, block_size: int) -> BlockKey:
    """Identity of the request's `index`-th full block of tokens."""
    hashes = request.block_hashes
    if hashes is not None:
        # Hashes of finer blocks: the one that ends where this block ends names its prefix.
        per = request.hash_block_size or block_size
        last = (index + 1) * block_size // per - 1
        if block_size % per == 0 and last < len(hashes):
            return (hashes[last], index)
    if request.prefix_key is not None and (index + 1) * block_size <= request.prompt_tokens:
        return (request.prefix_key, index)
    return (request.request_id, index)


def block_keys(request: Request, tokens: int, block_size: int) -> list[BlockKey]:
    """Keys of the full blocks of the request's first `tokens` tokens."""
    return [block_key(request, i, block_size) for i in range(tokens // block_size)]


def token_block_hashes(token_ids: Sequence[int], block_size: int) -> tuple[int, ...]:
    """Chained hashes of the prompt's full blocks, as vLLM chains them: each block's hash
    covers its parent's hash and its own token ids. 64-bit BLAKE2b, so that every process (each
    ingress, the scheduler) computes the same values, which Python's salted hash() would not
    guarantee for bytes."""
    hashes: list[int] = []
    parent = b""
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        block = token_ids[start : start + block_size]
        payload = parent + b"".join(t.to_bytes(4, "little", signed=True) for t in block)
        parent = hashlib.blake2b(payload, digest_size=8).digest()
        hashes.append(int.from_bytes(parent, "little"))
    return tuple(hashes)


@dataclass(frozen=True, slots=True)
class TraceBlocks(Sequence[Hashable]):
    """The block hashes of a trace request, derived lazily from its Mooncake `hash_ids`: vLLM
    block i (of `block_size` tokens) lies in trace block i * block_size // 512, and because the
    trace's ids are chained, (that id, i's place within it) names the whole prefix too. Lazy,
    as a long prompt has hundreds of blocks and a trace thousands of requests."""

    hash_ids: tuple[int, ...]
    prompt_tokens: int
    block_size: int

    def __post_init__(self) -> None:
        if TRACE_BLOCK_TOKENS % self.block_size:
            raise ValueError(f"block size {self.block_size} does not divide {TRACE_BLOCK_TOKENS}")

    def __len__(self) -> int:
        covered = min(self.prompt_tokens, len(self.hash_ids) * TRACE_BLOCK_TOKENS)
        return covered // self.block_size

    @overload
    def __getitem__(self, index: int) -> Hashable: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Hashable]: ...
    def __getitem__(self, index: int | slice) -> Hashable | Sequence[Hashable]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not 0 <= index < len(self):
            raise IndexError(index)
        per = TRACE_BLOCK_TOKENS // self.block_size
        return (self.hash_ids[index // per], index % per)
