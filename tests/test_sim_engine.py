"""The simulated vLLM v1 engine: KV block accounting, recompute preemption of the
lowest-priority request, chunked prefill under the token budget, admission limits."""

from __future__ import annotations

import pytest

from cluster.config import EngineConfig
from cluster.dispatch import Dispatch
from cluster.events import FinishReason
from cluster.request import Request
from cluster.sim.engine import SimulatedEngine
from cluster.sim.kv_cache import BlockTable, KVBlockPool
from tests.sim_audit import STEP_TIME, AuditedEngine, Ledger, make_engine


def dispatch(
    engine: SimulatedEngine,
    seq: int,
    prompt: int,
    priority: int,
    max_new: int,
    generated: int = 0,
    final: bool = True,
) -> Request:
    """Hand the engine a request as the scheduler would (its seq numbers arrivals)."""
    r = Request(f"q{seq}", prompt, generated + max_new, 0.0, output_tokens=generated + max_new)
    r.seq = seq
    r.generated = generated
    engine.add(Dispatch(r, engine.replica_id, priority, max_new, final))
    return r


def step(engine: SimulatedEngine):
    """One engine step, giving each request its sampled token as the scheduler would."""
    res = engine.step()
    for s in res.sampled:
        s.request.generated += 1
    return res


def run_to_end(engine: SimulatedEngine, limit: int = 10_000) -> list:
    """Step until the engine is idle; returns the step results."""
    results = []
    while engine.has_work():
        results.append(step(engine))
        assert len(results) < limit, "engine made no progress"
    return results


def names(seqs) -> list[str]:
    return [s.request.request_id for s in seqs]


# ---- KV block pool ------------------------------------------------------------------------


def test_kv_pool_counts_blocks_and_refuses_without_taking():
    pool = KVBlockPool(4, 16)
    assert pool.blocks_for(0) == 0 and pool.blocks_for(1) == 1 and pool.blocks_for(16) == 1
    assert pool.blocks_for(17) == 2
    table = BlockTable()
    assert pool.try_grow(table, 33)
    assert table.size == 3 and pool.free == 1 and pool.used == 3
    assert pool.try_grow(table, 48) and table.size == 3 and pool.free == 1  # same blocks
    assert not pool.try_grow(table, 65) and table.size == 3 and pool.free == 1  # nothing taken
    assert pool.try_grow(table, 64) and table.size == 4 and pool.free == 0
    pool.release(table)
    assert pool.free == 4 and table.size == 0
    with pytest.raises(RuntimeError, match="released more blocks"):
        pool.release(BlockTable(private=1))
    with pytest.raises(ValueError):
        KVBlockPool(0, 16)


# ---- whole runs ---------------------------------------------------------------------------


def test_no_block_leaks_and_every_request_gets_exactly_its_tokens():
    ledger = Ledger()
    engine = make_engine(ledger, num_kv_blocks=40, max_num_seqs=6, max_num_batched_tokens=128)
    reqs = [
        dispatch(engine, i, prompt=13 * i + 5, priority=i % 4, max_new=3 + 7 * i) for i in range(12)
    ]
    run_to_end(engine)
    ledger.assert_drained()
    assert engine.preemptions > 0  # the cache is small enough to force some
    assert all(r.generated == r.output_tokens for r in reqs)
    assert all(ledger.tokens[r.request_id] == r.output_tokens for r in reqs)
    assert all(ledger.finishes[r.request_id] == 1 for r in reqs)


def test_preemption_takes_the_lowest_priority_request_and_frees_its_blocks():
    ledger = Ledger()
    engine = make_engine(ledger, num_kv_blocks=7, max_num_batched_tokens=512)
    a = dispatch(engine, 0, prompt=31, priority=1, max_new=4)  # 2 blocks
    b = dispatch(engine, 1, prompt=47, priority=3, max_new=4)  # 3 blocks, lowest priority
    c = dispatch(engine, 2, prompt=31, priority=2, max_new=4)  # 2 blocks
    first = step(engine)
    assert names(first.started) == ["q0", "q2", "q1"]  # admitted in priority order
    assert engine.kv.free == 0 and first.prefill_tokens == 31 + 47 + 31
    second = step(engine)  # decodes fit in the blocks they hold
    assert not second.preempted
    third = step(engine)  # a and c need a third block each: the cache is full
    assert names(third.preempted) == ["q1"]
    assert engine.preemptions == 1
    victim = third.preempted[0]
    assert victim.blocks == 0 and victim.num_computed == 0 and victim.new_tokens == 2
    assert engine.kv.free == 1  # b's 3 blocks went back; a and c took one each
    assert names(engine.running) == ["q0", "q2"]
    assert {a.request_id, c.request_id} == set(names(third.sampled))

    # b comes back when a and c are done, recomputing its prompt and its 2 tokens.
    later = run_to_end(engine)
    readmitted = next(r for r in later if "q1" in names(r.started))
    assert readmitted.prefill_tokens == 47 + 2
    assert b.generated == 4
    assert ledger.preempted["q1"] == ledger.reacquired["q1"] == 1
    ledger.assert_drained()


def test_victim_ties_on_priority_go_to_the_latest_arrival():
    ledger = Ledger()
    engine = make_engine(ledger, num_kv_blocks=6, max_num_batched_tokens=512)
    for i in (0, 1, 2):
        dispatch(engine, i, prompt=32, priority=5, max_new=3)  # 2 blocks each, full cache
    step(engine)
    res = step(engine)  # each needs a third block
    assert names(res.preempted) == ["q2"]
    assert names(engine.running) == ["q0", "q1"]


def test_a_request_that_cannot_grow_and_is_lowest_preempts_itself():
    ledger = Ledger()
    engine = make_engine(ledger, num_kv_blocks=4, max_num_batched_tokens=512)
    dispatch(engine, 0, prompt=32, priority=9, max_new=3)  # admitted first, lowest priority
    dispatch(engine, 1, prompt=32, priority=1, max_new=3)
    step(engine)
    res = step(engine)
    assert names(res.preempted) == ["q0"]
    assert names(res.sampled) == ["q1"]
    run_to_end(engine)
    ledger.assert_drained()


def test_no_admission_in_a_step_that_preempted():
    ledger = Ledger()
    engine = make_engine(ledger, num_kv_blocks=7, max_num_batched_tokens=512)
    dispatch(engine, 0, prompt=31, priority=1, max_new=10)
    dispatch(engine, 1, prompt=47, priority=3, max_new=10)
    dispatch(engine, 2, prompt=31, priority=2, max_new=10)
    step(engine)
    step(engine)
    dispatch(engine, 3, prompt=10, priority=0, max_new=1)  # top priority, needs one block
    res = step(engine)
    assert names(res.preempted) == ["q1"] and engine.kv.free == 1
    assert res.started == []  # a block is free, but vLLM v1 admits nothing after preempting
    nxt = step(engine)
    assert names(nxt.started) == ["q3"]


# ---- batching limits ----------------------------------------------------------------------


def test_chunked_prefill_respects_the_token_budget():
    ledger = Ledger()
    engine = make_engine(ledger, max_num_batched_tokens=64, num_kv_blocks=64)
    r = dispatch(engine, 0, prompt=200, priority=0, max_new=2)
    results = run_to_end(engine)
    assert [res.prefill_tokens for res in results] == [64, 64, 64, 8, 0]
    assert [len(res.sampled) for res in results] == [0, 0, 0, 1, 1]  # first token with the
    assert r.generated == 2  # last chunk, then one decode step
    assert all(res.duration > 0 for res in results)


def test_decodes_share_the_budget_with_a_new_prefill():
    ledger = Ledger()
    engine = make_engine(ledger, max_num_batched_tokens=32, num_kv_blocks=64)
    for i in range(4):
        dispatch(engine, i, prompt=4, priority=0, max_new=20)
    step(engine)  # 4 prompts of 4 tokens
    dispatch(engine, 9, prompt=100, priority=0, max_new=1)
    res = step(engine)
    # 4 decode tokens first (running requests go first), the rest of the budget to the prompt.
    assert res.prefill_tokens == 32 - 4 and res.batch_size == 5


def test_long_prefill_threshold_caps_each_chunk():
    ledger = Ledger()
    engine = make_engine(ledger, max_num_batched_tokens=64, long_prefill_token_threshold=16)
    dispatch(engine, 0, prompt=40, priority=0, max_new=1)
    dispatch(engine, 1, prompt=40, priority=0, max_new=1)
    res = step(engine)
    assert res.prefill_tokens == 32 and res.batch_size == 2


def test_max_num_seqs_caps_the_batch_and_admission_follows_priority():
    ledger = Ledger()
    engine = make_engine(ledger, max_num_seqs=2, num_kv_blocks=64)
    for i, prio in enumerate([5, 1, 3, 0, 4]):
        dispatch(engine, i, prompt=8, priority=prio, max_new=3)
    results = run_to_end(engine)
    started = [n for res in results for n in names(res.started)]
    assert started == ["q3", "q1", "q2", "q4", "q0"]
    assert max(res.batch_size for res in results) == 2
    assert engine.num_waiting == 0
    ledger.assert_drained()


def test_slice_ends_after_max_new_tokens():
    ledger = Ledger()
    engine = make_engine(ledger)
    r = dispatch(engine, 0, prompt=10, priority=0, max_new=4, generated=6, final=False)
    r.max_tokens = r.output_tokens = 30  # a slice of 4 tokens of a longer answer
    results = run_to_end(engine)
    assert results[0].prefill_tokens == 16  # the prompt and the 6 tokens it had
    assert r.generated == 10 and names(results[-1].done) == ["q0"]
    assert engine.events(results[-1]).ended == {"q0": FinishReason.SLICE}
    ledger.assert_drained()


# ---- interface ----------------------------------------------------------------------------


def test_abort_frees_the_blocks_of_running_and_waiting_requests():
    ledger = Ledger()
    engine = make_engine(ledger, max_num_seqs=1, num_kv_blocks=16)
    dispatch(engine, 0, prompt=40, priority=0, max_new=50)
    dispatch(engine, 1, prompt=40, priority=1, max_new=50)
    step(engine)
    assert engine.kv.free == 16 - 3 and engine.num_waiting == 1
    engine.abort("q1")
    engine.abort("q0")
    engine.abort("q0")  # unknown by now: nothing happens
    assert not engine.has_work() and engine.kv.free == 16


def test_load_report_and_input_errors():
    ledger = Ledger()
    engine = make_engine(ledger, max_num_seqs=1, num_kv_blocks=16)
    r = dispatch(engine, 0, prompt=40, priority=0, max_new=5)
    dispatch(engine, 1, prompt=8, priority=0, max_new=5)
    step(engine)
    load = engine.load()
    assert (load.replica_id, load.num_running, load.num_waiting) == ("r0", 1, 1)
    assert (load.free_kv_blocks, load.total_kv_blocks) == (13, 16)
    with pytest.raises(ValueError, match="already on replica r0"):
        engine.add(Dispatch(r, "r0", 0, 5, True))
    small = AuditedEngine(
        ledger,
        "r1",
        EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=100),
        STEP_TIME,
        16,
    )
    with pytest.raises(ValueError, match="exceed max_model_len"):
        dispatch(small, 5, prompt=100, priority=0, max_new=1)
