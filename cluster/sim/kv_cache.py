"""Paged KV-cache accounting with automatic prefix caching, as vLLM allocates blocks.

Blocks hold `block_size` tokens. A full block is known by what it holds (vLLM hashes the
block-aligned token prefix): here by `cluster.prefix_blocks.block_key`, the identity the
scheduler's prefix index uses too (a prompt block by its chained hash, or by prompt text; a
block of generated tokens by the request, which finds it again when it resumes). Freed full
blocks stay cached (still counted free) until an allocation evicts them, least recently freed first.
"""

from __future__ import annotations

from collections import OrderedDict

from cluster.numbers import ceil_div
from cluster.prefix_blocks import BlockKey, block_key
from cluster.request import Request

__all__ = ["BlockKey", "KVBlockPool", "block_key"]


class KVBlockPool:
    """Counts blocks and remembers which freed ones still hold a known prefix; which physical
    block holds what does not matter to timing."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._empty = num_blocks  # free and holding nothing known
        self._cached: OrderedDict[BlockKey, None] = OrderedDict()  # free, oldest first

    @property
    def free(self) -> int:
        """Blocks an allocation may take: empty ones and evictable cached ones (as vLLM
        counts its free queue)."""
        return self._empty + len(self._cached)

    @property
    def cached(self) -> int:
        return len(self._cached)

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    def blocks_for(self, tokens: int) -> int:
        return ceil_div(tokens, self.block_size)

    def cached_prefix(self, request: Request, tokens: int) -> list[BlockKey]:
        """Keys of the cached blocks that start the request's first `tokens` tokens. At least
        one token is always left to compute, as in vLLM (the last one yields the logits)."""
        hits: list[BlockKey] = []
        for i in range((tokens - 1) // self.block_size):
            key = block_key(request, i, self.block_size)
            if key not in self._cached:
                break
            hits.append(key)
        return hits

    def try_grow(self, held: int, tokens: int, reuse: list[BlockKey] | None = None) -> int | None:
        """Blocks held after growing an allocation of `held` blocks to cover `tokens`, taking
        the cached blocks `reuse` first; None (nothing taken) when the pool cannot."""
        reuse = reuse or []
        need = ceil_div(tokens, self.block_size) - held - len(reuse)
        if need > self.free - len(reuse):
            return None
        for key in reuse:
            del self._cached[key]
        if need <= 0:
            return held + len(reuse)
        evict = need - self._empty
        for _ in range(max(0, evict)):
            self._cached.popitem(last=False)
            self._empty += 1
        self._empty -= need
        return held + len(reuse) + need

    def release(self, held: int, keys: list[BlockKey] | None = None) -> None:
        """Free `held` blocks, of which the first ones hold the full blocks `keys`: those stay
        cached. Inserted last block first, as vLLM frees them, so that eviction takes a
        prefix's tail before its head."""
        keys = keys or []
        if len(keys) > held:
            raise RuntimeError("more cached keys than blocks released")
        for key in reversed(keys):
            if key in self._cached:  # a twin (same prompt, run concurrently) cached it first
                self._empty += 1
            else:
                self._cached[key] = None
        self._empty += held - len(keys)
        if self.free > self.num_blocks:
            raise RuntimeError("KV block pool released more blocks than it holds")
