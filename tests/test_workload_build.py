import numpy as np
import pytest

from cluster.workload.prompts import PromptRecord, read_prompt_file
from cluster.workload.workload import build_workload
from tests.support import FIXTURE

AZURE_CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.0000000,374,44
2023-11-16 18:15:48.0000000,396,0
2023-11-16 18:15:50.0000000,879,5000
"""


@pytest.fixture(scope="module")
def prompts():
    return read_prompt_file(FIXTURE)


def test_burst_uses_every_prompt_once(prompts):
    items = build_workload(prompts, "burst", None, seed=0)
    assert len(items) == len(prompts)
    assert all(it.arrival_time == 0 for it in items)
    assert sorted(it.prompt for it in items) == sorted(p.prompt for p in prompts)
    assert len({it.request_id for it in items}) == len(items)
    by_prompt = {p.prompt: p for p in prompts}
    for it in items:
        rec = by_prompt[it.prompt]
        assert (it.prompt_tokens, it.output_tokens) == (rec.prompt_tokens, rec.output_tokens)


def test_deterministic_for_a_seed(prompts):
    a = build_workload(prompts, "poisson:5", 100, seed=1)
    assert a == build_workload(prompts, "poisson:5", 100, seed=1)
    assert a != build_workload(prompts, "poisson:5", 100, seed=2)
    assert all(x.arrival_time <= y.arrival_time for x, y in zip(a, a[1:], strict=False))


def test_more_requests_than_prompts_cycles_evenly(prompts):
    items = build_workload(prompts[:10], "gamma:4:2", 35, seed=0)
    counts = np.unique([it.prompt for it in items], return_counts=True)[1]
    assert len(items) == 35 and sorted(set(counts)) == [3, 4]
    assert len({it.request_id for it in items}) == 35


def test_fields_pass_through_and_output_cap():
    recs = [
        PromptRecord("p", 500, 3, score=1.5, predicted_tokens=400.0, slo="chat", tenant="t", id="x")
    ]
    (item,) = build_workload(recs, "burst", None, seed=0, max_output_tokens=128)
    assert (item.output_tokens, item.score, item.predicted_tokens, item.slo, item.tenant) == (
        128,
        1.5,
        400.0,
        "chat",
        "t",
    )
    assert item.request_id == "req-000000-x"


def test_lengths_from_trace(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(AZURE_CSV)
    items = build_workload(
        None, f"trace:{path}", None, seed=0, lengths_from_trace=True, max_output_tokens=2048
    )
    assert [it.arrival_time for it in items] == [0, 2, 4]
    assert [(it.prompt_tokens, it.output_tokens) for it in items] == [
        (374, 44),
        (396, 1),
        (879, 2048),
    ]
    assert all(it.prompt is None for it in items)
    items = build_workload(
        None, f"trace:{path}", 5, seed=0, lengths_from_trace=True, target_rate=2.0
    )
    assert len(items) == 5 and items[-1].arrival_time == pytest.approx(2.0)


def test_errors(prompts, tmp_path):
    with pytest.raises(ValueError, match="needs a trace"):
        build_workload(None, "burst", 3, seed=0, lengths_from_trace=True)
    with pytest.raises(ValueError, match="pass no prompts"):
        path = tmp_path / "a.csv"
        path.write_text(AZURE_CSV)
        build_workload(prompts, f"trace:{path}", 3, seed=0, lengths_from_trace=True)
    with pytest.raises(ValueError, match="needs prompts"):
        build_workload([], "burst", 3, seed=0)
    with pytest.raises(ValueError, match="max_output_tokens"):
        build_workload(prompts, "burst", 3, seed=0, max_output_tokens=0)
    with pytest.raises(ValueError, match="no prompt_tokens"):
        build_workload([PromptRecord("p", 3)], "burst", 1, seed=0)
