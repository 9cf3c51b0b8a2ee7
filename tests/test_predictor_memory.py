"""The retrieval memory of served traffic: close neighbours move a prompt's estimate toward
their real lengths, the cap holds with the oldest evicted first, and a saved memory comes back
after a restart (an unreadable one comes back empty)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("usearch")

from predictor_actor.memory import MemoryConfig, RetrievalMemory  # noqa: E402

DIM = 32


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_close_neighbours_pull_the_estimate_to_their_lengths():
    rng = np.random.default_rng(0)
    memory = RetrievalMemory(DIM, MemoryConfig(radius=0.1, prior=4.0))
    seen = _unit(rng, 50)
    memory.add(seen, np.full(50, 1000))
    # the same prompts again and prompts like none stored
    estimate = np.full(2, np.log1p(10.0))
    far = _unit(rng, 1)
    out, got = memory.blend(estimate, np.vstack((seen[:1], far)))
    assert got.close[0] >= 1 and got.close[1] == 0
    assert out[1] == estimate[1]  # no neighbour: the model's estimate untouched
    assert estimate[0] < out[0] < np.log1p(1000.0)
    # many close neighbours weigh more than one
    many = RetrievalMemory(DIM, MemoryConfig(radius=0.1, prior=4.0))
    many.add(np.repeat(seen[:1], 12, axis=0), np.full(12, 1000))
    out_many, got_many = many.blend(estimate[:1], seen[:1])
    assert got_many.close[0] == 12 and out_many[0] > out[0]


@settings(max_examples=20, deadline=None)
@given(
    capacity=st.integers(1, 40),
    batches=st.lists(st.integers(1, 25), min_size=1, max_size=8),
)
def test_the_cap_holds_and_the_oldest_go_first(capacity, batches):
    rng = np.random.default_rng(capacity)
    memory = RetrievalMemory(DIM, MemoryConfig(capacity=capacity, evict_fraction=0.25))
    added = 0
    for n in batches:
        memory.add(_unit(rng, n), np.arange(added, added + n) + 1)
        added += n
        assert len(memory) <= capacity
    kept = sorted(memory._log_length)  # insertion numbers of the entries kept
    assert kept == list(range(added - len(memory), added))  # a suffix: the newest
    assert memory.evicted == added - len(memory)


def test_saved_memory_survives_a_restart_and_a_lower_cap(tmp_path):
    rng = np.random.default_rng(1)
    memory = RetrievalMemory(DIM)
    vectors = _unit(rng, 30)
    memory.add(vectors, np.arange(1, 31) * 10)
    memory.save(tmp_path / "m")
    back = RetrievalMemory.load(tmp_path / "m", DIM)
    assert len(back) == 30
    before, after = memory.recall(vectors[:5]), back.recall(vectors[:5])
    np.testing.assert_allclose(after.log_length, before.log_length)
    back.add(_unit(rng, 1), np.array([7]))  # keys go on after the saved ones
    assert len(back) == 31 and max(back._log_length) == 30
    small = RetrievalMemory.load(tmp_path / "m", DIM, MemoryConfig(capacity=10))
    assert len(small) == 10 and min(small._log_length) == 20


def test_an_unreadable_memory_starts_empty(tmp_path):
    memory = RetrievalMemory(DIM)
    memory.add(_unit(np.random.default_rng(2), 5), np.arange(1, 6))
    memory.save(tmp_path / "m")
    memory.save(tmp_path / "ok")
    (tmp_path / "m" / "memory-labels.npz").write_bytes(b"not a zip")
    assert len(RetrievalMemory.load(tmp_path / "m", DIM)) == 0
    assert len(RetrievalMemory.load(tmp_path / "nothing-here", DIM)) == 0
    assert len(RetrievalMemory.load(tmp_path / "ok", DIM + 1)) == 0  # saved for another width
    assert len(RetrievalMemory.load(tmp_path / "ok", DIM)) == 5
