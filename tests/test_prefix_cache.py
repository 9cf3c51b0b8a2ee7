"""The simulated engine's prefix cache: freed full blocks kept and LRU-evicted, hit on the
resume of the same request and on a shared prompt, so that only uncached tokens are prefilled."""

from __future__ import annotations

import pytest

from cluster.config import EngineConfig
from cluster.dispatch import Dispatch
from cluster.request import Request
from cluster.sim.host_tier import HostKVTier, host_link_gb_s
from cluster.sim.kv_cache import BlockTable, KVBlockPool, block_key
from tests.sim_audit import Ledger, make_engine


def request(rid: str, prompt: int, total: int, seq: int, prefix_key: str | None = None):
    r = Request(rid, prompt, total, 0.0, output_tokens=total, prefix_key=prefix_key)
    r.seq = seq
    return r


def run_dispatch(engine, r: Request, max_new: int, final: bool):
    """Dispatch `r` for `max_new` tokens and step until it ends; the steps' results."""
    engine.add(Dispatch(r, engine.replica_id, 0, max_new, final))
    results = []
    while engine.has_work():
        res = engine.step()
        for s in res.sampled:
            s.request.generated += 1
        results.append(res)
    return results


def test_pool_keeps_freed_full_blocks_and_evicts_a_prefix_tail_first():
    pool = KVBlockPool(4, 16)
    r = request("a", 40, 41, 0)
    table = BlockTable()
    assert pool.try_grow(table, 40)
    pool.commit(table, r, 2)  # 2 full blocks; the third is partial
    keys = [block_key(r, i, 16) for i in range(2)]
    assert table.keys == keys and table.private == 1 and pool.references(keys[0]) == 1
    pool.release(table)
    assert pool.free == 4 and pool.cached == 2 and pool.references(keys[0]) == 0
    assert pool.cached_prefix(r, 41) == keys
    assert pool.cached_prefix(r, 32) == keys[:1]  # one token is always left to compute
    # Taking 3 of the 2 empty blocks evicts one cached block: the tail, block 1.
    other = BlockTable()
    assert pool.try_grow(other, 48)
    assert other.size == 3 and pool.cached == 1 and pool.cached_prefix(r, 41) == keys[:1]
    # 1 cached + 1 more: no room
    assert not pool.try_grow(BlockTable(), 17, pool.cached_prefix(r, 41))
    pool.release(other)
    reused = BlockTable()
    assert pool.try_grow(reused, 17, pool.cached_prefix(r, 41))
    assert reused.size == 2 and pool.free == 2 and pool.cached == 0


def test_a_running_requests_full_blocks_are_shared_and_held_once():
    pool = KVBlockPool(8, 16)
    a, b = request("a", 50, 60, 0, "p"), request("b", 50, 60, 1, "p")
    ta = BlockTable()
    assert pool.try_grow(ta, 50)
    pool.commit(ta, a, 3)
    hits = pool.cached_prefix(b, 50)
    assert hits == ta.keys and len(hits) == 3  # in use by a, not cached: found all the same
    tb = BlockTable()
    assert pool.try_grow(tb, 50, hits)
    assert tb.size == 4 and tb.private == 1 and pool.used == 5  # 3 shared + a partial each
    assert pool.references(hits[0]) == 2
    pool.release(ta)
    assert pool.used == 4 and pool.cached == 0 and pool.references(hits[0]) == 1
    pool.release(tb)
    assert pool.free == 8 and pool.cached == 3


def test_a_twin_computed_alongside_keeps_its_copy_private():
    pool = KVBlockPool(8, 16)
    a, c = request("a", 32, 40, 0, "p"), request("c", 32, 40, 1, "p")
    ta, tc = BlockTable(), BlockTable()
    assert pool.try_grow(ta, 32) and pool.try_grow(tc, 32)
    pool.commit(ta, a, 2)
    pool.commit(tc, c, 2)  # the same prefix, computed in the same step: a's copy is the known one
    assert tc.keys == [] and tc.private == 2 and pool.references(ta.keys[0]) == 1
    pool.release(tc)
    pool.release(ta)
    assert pool.free == 8 and pool.cached == 2


def test_a_resumed_request_prefills_only_its_uncached_tail():
    engine = make_engine(Ledger(), enable_prefix_caching=True, num_kv_blocks=64)
    r = request("a", 100, 140, 0)
    first = run_dispatch(engine, r, 20, final=False)
    assert first[0].prefill_tokens == 100 and r.generated == 20
    assert engine.kv.cached == 119 // 16  # the full blocks of the 119 computed tokens
    again = run_dispatch(engine, r, 20, final=True)
    context = 120  # prompt + the 20 tokens it has
    cached = 7 * 16  # 7 full blocks of the 119 computed tokens
    assert again[0].started[0].cached_tokens == cached
    assert again[0].prefill_tokens == context - cached
    events = engine.events(again[0])
    assert events.cached == {"a": cached}
    assert engine.cached_tokens == cached and engine.admitted_tokens == 100 + context


def test_requests_with_the_same_prompt_share_its_blocks_but_not_their_answers():
    engine = make_engine(Ledger(), enable_prefix_caching=True)
    a, b = request("a", 50, 60, 0, "p"), request("b", 50, 60, 1, "p")
    run_dispatch(engine, a, 10, final=True)
    res = run_dispatch(engine, b, 10, final=True)
    assert res[0].started[0].cached_tokens == 48  # the prompt's 3 full blocks, not a's answer
    c = request("c", 50, 60, 2, "other")
    assert run_dispatch(engine, c, 10, final=True)[0].prefill_tokens == 50


def test_a_request_shares_the_prompt_blocks_of_one_still_running():
    engine = make_engine(Ledger(), enable_prefix_caching=True, num_kv_blocks=16)
    a, b = request("a", 50, 90, 0, "p"), request("b", 50, 90, 1, "p")
    engine.add(Dispatch(a, engine.replica_id, 0, 40, True))
    assert engine.step().prefill_tokens == 50
    engine.add(Dispatch(b, engine.replica_id, 0, 40, True))
    res = engine.step()
    assert res.started[0] is engine.running[1] and res.started[0].cached_tokens == 48
    assert res.prefill_tokens == 2  # a's prompt blocks, computed and still in use, are shared
    assert engine.kv.used == 4 + 1  # a: 3 shared + its tail; b: its own tail only
    while engine.has_work():
        engine.step()
    assert engine.kv.free == 16


def test_without_prefix_caching_nothing_is_cached():
    engine = make_engine(Ledger())
    r = request("a", 100, 140, 0)
    run_dispatch(engine, r, 20, final=False)
    assert engine.kv.cached == 0
    assert run_dispatch(engine, r, 20, final=True)[0].prefill_tokens == 120


def test_cached_blocks_give_way_to_new_work_and_none_leak():
    ledger = Ledger()
    engine = make_engine(ledger, enable_prefix_caching=True, num_kv_blocks=16)
    for i in range(6):  # each needs 8 blocks: the cache is evicted again and again
        run_dispatch(engine, request(f"r{i}", 120, 121, i, f"p{i % 3}"), 1, final=True)
    ledger.assert_drained()
    assert engine.kv.cached <= engine.kv.num_blocks and engine.kv.free == 16
    # Prompts p0..p2 each came twice, with room for two prompts' blocks: each repeat found
    # only its first block, as evictions took every prefix's tail first.
    assert engine.cached_tokens == 3 * 16


def test_the_host_tier_serves_what_the_device_cache_evicted():
    # 8 device blocks: a second request's prompt evicts the first one's cached blocks, which
    # the host tier kept; its resume loads them instead of recomputing.
    engine = make_engine(
        Ledger(), enable_prefix_caching=True, num_kv_blocks=8, host_offload_gib=1.0
    )
    a = request("a", 100, 140, 0)
    run_dispatch(engine, a, 20, final=False)  # 119 tokens computed: 7 full blocks
    assert len(engine.host) == 7 and engine.kv.cached == 7
    run_dispatch(engine, request("b", 100, 101, 1), 1, final=True)  # takes 7 of the 8 blocks
    # evicted from the device, but for the head (freed last block first, a prefix's tail goes)
    assert engine.kv.cached_prefix(a, 120) == [("a", 0)]
    resumed = run_dispatch(engine, a, 8, final=True)  # 127 tokens at most: all 8 blocks
    first = resumed[0]
    assert first.started[0].cached_tokens == 7 * 16
    assert first.prefill_tokens == 120 - 7 * 16
    assert engine.host.loaded == 6 and engine.recomputed_tokens == 120 - 1 - 7 * 16
    # The load is charged to the step, at the link's bandwidth.
    block_s = 16 * 131072 / 25e9
    plain = engine.step_time.step_seconds(first.prefill_tokens, 0, 0, 8 * 8, 8 * 112, 1)
    assert first.duration > plain + 5.9 * block_s


def test_the_host_tier_evicts_the_least_recently_stored_block():
    tier = HostKVTier(capacity_blocks=2, seconds_per_block=0.001)
    tier.store([("p", 0), ("p", 1)])
    tier.store([("p", 0)])  # refreshed: ("p", 1) is now the oldest
    tier.store([("q", 0)])
    assert len(tier) == 2 and tier.evicted == 1
    r = request("x", 40, 41, 0, prefix_key="p")
    assert tier.hits(r, 0, 41, 16) == 1  # block 0 held, block 1 evicted
    assert tier.load(3) == 0.003


def test_a_dispatch_the_whole_pool_cannot_hold_is_refused():
    engine = make_engine(Ledger(), num_kv_blocks=8)  # 128 tokens
    with pytest.raises(ValueError, match="need 9 KV blocks"):
        engine.add(Dispatch(request("a", 100, 140, 0), engine.replica_id, 0, 30, True))
    engine.add(Dispatch(request("b", 100, 140, 1), engine.replica_id, 0, 28, True))


def test_recompute_counts_only_context_computed_before():
    engine = make_engine(Ledger(), enable_prefix_caching=False)
    r = request("a", 100, 140, 0)
    run_dispatch(engine, r, 20, final=False)
    assert engine.recomputed_tokens == 0  # a fresh prompt is not recomputed
    run_dispatch(engine, r, 20, final=True)
    assert engine.recomputed_tokens == 119  # all but the token it samples from


def test_host_offload_needs_prefix_caching_and_a_known_link():
    with pytest.raises(ValueError, match="needs prefix caching"):
        EngineConfig(host_offload_gib=1.0)
    with pytest.raises(ValueError, match="host link"):
        host_link_gb_s("tpu-llama3-8b", 1)
    assert host_link_gb_s("h100-llama3-70b-tp4", 4) == 200.0
