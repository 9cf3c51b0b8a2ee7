"""Paged KV-cache accounting with automatic prefix caching, as vLLM allocates blocks.

Blocks hold `block_size` tokens. A full block is known by what it holds (vLLM hashes the
block-aligned token prefix): here by `cluster.prefix_blocks.block_key`, the identity the
scheduler's prefix index uses too (a prompt block by its chained hash, or by prompt text; a
block of generated tokens by the request, which finds it again when it resumes).

As in vLLM, a full block is registered under its key as soon as it is scheduled for
computation (`commit`), and from then on every request that starts with the same prefix
shares it, reference-counted, while it runs: the block is held once however many requests use
it. A block whose last user frees it stays cached (still counted free) until an allocation
evicts it, least recently freed first. A block computed again while a twin already holds its
key stays private to its sequence and holds nothing known once freed (vLLM keeps the first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from cluster.numbers import ceil_div
from cluster.prefix_blocks import BlockKey, block_key
from cluster.request import Request

__all__ = ["BlockKey", "BlockTable", "KVBlockPool", "block_key"]


@dataclass(slots=True)
class BlockTable:
    """The blocks one sequence holds: registered full blocks by key (other sequences may hold
    the same ones), and private ones (partial, not yet computed, or a twin's duplicate)."""

    keys: list[BlockKey] = field(default_factory=list)
    private: int = 0
    committed: int = 0  # leading full blocks already registered (or found taken by a twin)

    @property
    def size(self) -> int:
        return len(self.keys) + self.private


class KVBlockPool:
    """Counts blocks and which known prefixes they hold; which physical block holds what does
    not matter to timing."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._empty = num_blocks  # free and holding nothing known
        self._cached: OrderedDict[BlockKey, None] = OrderedDict()  # free, oldest first
        self._refs: dict[BlockKey, int] = {}  # in use: how many sequences hold each

    @property
    def free(self) -> int:
        """Blocks an allocation may take: empty ones and evictable cached ones (as vLLM
        counts its free queue)."""
        return self._empty + len(self._cached)

    @property
    def cached(self) -> int:
        """Free blocks that still hold a known prefix."""
        return len(self._cached)

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    def references(self, key: BlockKey) -> int:
        """How many sequences hold the block known by `key` (0: free or unknown)."""
        return self._refs.get(key, 0)

    def blocks_for(self, tokens: int) -> int:
        return ceil_div(tokens, self.block_size)

    def cached_prefix(self, request: Request, tokens: int) -> list[BlockKey]:
        """Keys of the known blocks, cached or in use by others, that start the request's
        first `tokens` tokens. At least one token is always left to compute, as in vLLM (the
        last one yields the logits)."""
        hits: list[BlockKey] = []
        for i in range((tokens - 1) // self.block_size):
            key = block_key(request, i, self.block_size)
            if key not in self._cached and key not in self._refs:
                break
            hits.append(key)
        return hits

    def try_grow(self, table: BlockTable, tokens: int, reuse: list[BlockKey] | None = None) -> bool:
        """Grow the table to cover `tokens`, starting an empty table with the known blocks
        `reuse` (shared, so taken from the free count only when cached); False (nothing taken)
        when the pool cannot."""
        reuse = reuse or []
        if reuse and table.size:
            raise ValueError("only an empty block table starts from reused blocks")
        need = max(0, ceil_div(tokens, self.block_size) - table.size - len(reuse))
        revived = sum(1 for key in reuse if key in self._cached)
        if need + revived > self.free:
            return False
        for key in reuse:
            if key in self._cached:
                del self._cached[key]
            self._refs[key] = self._refs.get(key, 0) + 1
        if reuse:
            table.keys.extend(reuse)
            table.committed = len(reuse)
        for _ in range(max(0, need - self._empty)):
            self._cached.popitem(last=False)
            self._empty += 1
        self._empty -= need
        table.private += need
        return True

    def commit(self, table: BlockTable, request: Request, full_blocks: int) -> None:
        """The request's first `full_blocks` blocks are computed (or scheduled to be): register
        the new ones under their keys, so that others can share them."""
        for i in range(table.committed, full_blocks):
            key = block_key(request, i, self.block_size)
            if key not in self._refs and key not in self._cached:
                self._refs[key] = 1
                table.keys.append(key)
                table.private -= 1
        table.committed = max(table.committed, full_blocks)
        if table.private < 0:
            raise RuntimeError("committed more full blocks than the table holds")

    def release(self, table: BlockTable) -> None:
        """Free the table's blocks. Known ones its last user frees stay cached, inserted last
        block first, as vLLM frees them, so that eviction takes a prefix's tail before its
        head."""
        for key in reversed(table.keys):
            left = self._refs[key] - 1
            if left:
                self._refs[key] = left
            else:
                del self._refs[key]
                self._cached[key] = None
        self._empty += table.private
        table.keys, table.private, table.committed = [], 0, 0
        if self.free > self.num_blocks:
            raise RuntimeError("KV block pool released more blocks than it holds")
