"""Paged KV-cache accounting: blocks of `block_size` tokens, as vLLM allocates them."""

from __future__ import annotations

from cluster.numbers import ceil_div


class KVBlockPool:
    """Counts blocks; which physical block holds what does not matter to timing."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks

    def blocks_for(self, tokens: int) -> int:
        return ceil_div(tokens, self.block_size)

    def try_grow(self, held: int, tokens: int) -> int | None:
        """Blocks held after growing an allocation of `held` blocks to cover `tokens`, or None
        (nothing taken) when the pool cannot."""
        need = ceil_div(tokens, self.block_size) - held
        if need <= 0:
            return held
        if need > self.free:
            return None
        self.free -= need
        return held + need

    def release(self, held: int) -> None:
        self.free += held
        if self.free > self.num_blocks:
            raise RuntimeError("KV block pool released more blocks than it holds")

    @property
    def used(self) -> int:
        return self.num_blocks - self.free
