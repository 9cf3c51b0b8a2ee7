"""KV offloading to host memory, as vLLM's OffloadingConnector does it, costed for timing.

vLLM 0.32 (`kv_transfer_config` with the OffloadingConnector, or `--kv-offloading-size`, CUDA
only) copies each full block to host memory as it is computed, asynchronously, and, when a
request is admitted, loads the blocks that follow its device prefix-cache hit from host
memory instead of recomputing them. Here: the full blocks a sequence frees are stored (the copy
overlaps compute, so it costs no step time), the host holds `capacity_blocks`, least recently
stored evicted first, and an admission takes the blocks found there after its device hit, at
the host link's bandwidth. vLLM overlaps that load with other requests' steps (the request
waits for it); charging it to the step, as `SimulatedEngine` does, is slightly pessimistic:
a 2,000-token Llama-3-8B context is 250 MiB, 10 ms over PCIe 4.0 x16 against ~150 ms to
recompute it on an A100.
"""

from __future__ import annotations

from collections import OrderedDict

from cluster.request import Request
from cluster.sim.kv_cache import BlockKey, block_key

GB = 1e9
GIB = 1024**3
# Host link per GPU (unidirectional, what pinned-memory copies reach, about 80% of the
# nominal 32 and 64 GB/s): PCIe 4.0 x16 on A100 servers, PCIe 5.0 x16 on H100 ones.
HOST_LINK_GB_S = {"a100": 25.0, "h100": 50.0}


def host_link_gb_s(profile_name: str, tensor_parallel: int) -> float:
    """An engine's host bandwidth: its GPUs' links together (each holds 1/tp of the KV)."""
    gpu = profile_name.split("-", 1)[0]
    if gpu not in HOST_LINK_GB_S:
        raise ValueError(
            f"no host link bandwidth known for profile {profile_name!r}: "
            "set EngineConfig.host_link_gb_s"
        )
    return HOST_LINK_GB_S[gpu] * tensor_parallel


class HostKVTier:
    def __init__(self, capacity_blocks: int, seconds_per_block: float) -> None:
        if capacity_blocks < 1 or seconds_per_block < 0:
            raise ValueError("a host KV tier needs capacity_blocks >= 1, seconds_per_block >= 0")
        self.capacity_blocks = capacity_blocks
        self.seconds_per_block = seconds_per_block
        self._blocks: OrderedDict[BlockKey, None] = OrderedDict()  # least recently stored first
        self.stored = self.loaded = self.evicted = 0

    @classmethod
    def sized(
        cls, gib: float, block_size: int, kv_bytes_per_token: int, link_gb_s: float
    ) -> HostKVTier:
        block_bytes = block_size * kv_bytes_per_token
        return cls(int(gib * GIB // block_bytes), block_bytes / (link_gb_s * GB))

    def __len__(self) -> int:
        return len(self._blocks)

    def store(self, keys: list[BlockKey]) -> None:
        for key in keys:
            if key in self._blocks:
                self._blocks.move_to_end(key)
                continue
            self._blocks[key] = None
            self.stored += 1
            if len(self._blocks) > self.capacity_blocks:
                self._blocks.popitem(last=False)
                self.evicted += 1

    def hits(self, request: Request, first: int, tokens: int, block_size: int) -> int:
        """How many of the request's blocks from index `first` on, in a row, the host holds,
        within its first `tokens` tokens (leaving one to compute, as the device cache does)."""
        last = (tokens - 1) // block_size
        n = 0
        while first + n < last and block_key(request, first + n, block_size) in self._blocks:
            n += 1
        return n

    def load(self, blocks: int) -> float:
        """Seconds to bring `blocks` blocks back to the device."""
        self.loaded += blocks
        return blocks * self.seconds_per_block
