import gzip
import json

import numpy as np
import pytest

from cluster.workload.arrivals import ArrivalSpecError, arrival_times, replay_trace
from cluster.workload.traces import TraceFormatError, TraceRow, load_trace
from cluster.workload.workload import build_workload
from tests.support import SHARED, needs_shared

AZURE_CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:50.9951690,879,55
2023-11-16 18:15:56.6805900,91,16
"""


@pytest.fixture
def azure(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(AZURE_CSV)
    return path


@pytest.fixture
def mooncake(tmp_path):
    path = tmp_path / "mooncake.jsonl.gz"
    rows = [(0, 100, 5), (2500, 200, 6), (1000, 300, 7), (10000, 400, 8)]  # unsorted on purpose
    with gzip.open(path, "wt") as f:
        for ts, i, o in rows:
            ids = [0, ts]  # a second block per row, to see that they follow the sort
            f.write(
                json.dumps(
                    {"timestamp": ts, "input_length": i, "output_length": o, "hash_ids": ids}
                )
                + "\n"
            )
    return path


def test_azure_csv(azure):
    trace = load_trace(azure)
    assert trace.format == "azure" and len(trace) == 4
    assert trace.rows()[0] == TraceRow(0.0, 374, 44)
    assert np.allclose(trace.time_s, [0, 4.314579, 4.314579, 10.0])
    assert trace.rows()[2] == TraceRow(pytest.approx(4.314579), 879, 55)  # ties keep file order
    assert trace.mean_rate == pytest.approx(3 / 10)


def test_mooncake_jsonl_gz_sorted_by_time(mooncake):
    trace = load_trace(mooncake)
    assert trace.format == "mooncake"
    assert list(trace.time_s) == [0, 1.0, 2.5, 10.0]
    assert list(trace.input_tokens) == [100, 300, 200, 400]
    assert list(trace.output_tokens) == [5, 7, 6, 8]
    assert trace.hash_ids == ((0, 0), (0, 1000), (0, 2500), (0, 10000))


def test_mooncake_hash_ids_reach_the_workload_and_azure_has_none(mooncake, azure):
    items = build_workload(None, f"trace:{mooncake}", None, seed=0, lengths_from_trace=True)
    assert [it.hash_ids for it in items] == [(0, 0), (0, 1000), (0, 2500), (0, 10000)]
    items = build_workload(None, f"trace:{azure}", None, seed=0, lengths_from_trace=True)
    assert all(it.hash_ids is None for it in items) and load_trace(azure).hash_ids is None


def test_replay_and_scale(azure):
    assert np.allclose(arrival_times(f"trace:{azure}", 4, seed=0), [0, 4.314579, 4.314579, 10])
    t = arrival_times(f"trace:{azure}@3", 4, seed=0)
    assert (len(t) - 1) / t[-1] == pytest.approx(3)
    assert np.array_equal(t, arrival_times(f"trace:{azure}", 4, seed=9, target_rate=3))
    # shapes are kept: scaling multiplies every gap by the same factor
    assert np.allclose(t / t[-1], [0, 0.4314579, 0.4314579, 1])
    with pytest.raises(ArrivalSpecError, match="sets rate 3"):
        arrival_times(f"trace:{azure}@3", 4, seed=0, target_rate=5)


def test_replay_longer_than_the_trace_repeats_it(azure):
    trace = load_trace(azure)
    times, idx = replay_trace(trace, 10, None)
    assert list(idx) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert np.all(np.diff(times) >= 0)
    assert times[4] == pytest.approx(10 + 10 / 3)  # next pass starts one mean gap later
    times, _ = replay_trace(trace, 10, 2.0)
    assert 9 / times[-1] == pytest.approx(2.0)


def test_bad_traces(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(TraceFormatError, match="unknown trace format"):
        load_trace(bad)
    bad.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,3\n")
    with pytest.raises(TraceFormatError, match="lacks column.*GeneratedTokens"):
        load_trace(bad)
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,x,3\n")
    with pytest.raises(TraceFormatError, match=r"bad\.csv:2: bad Azure trace row"):
        load_trace(bad)
    moon = tmp_path / "m.jsonl"
    moon.write_text('{"timestamp": 0, "input_length": 5}\n')
    with pytest.raises(TraceFormatError, match=r"m\.jsonl:1: bad Mooncake trace line"):
        load_trace(moon)
    with pytest.raises(TraceFormatError, match="no such trace file"):
        load_trace(tmp_path / "absent.csv")


@needs_shared
@pytest.mark.needs_shared
def test_real_azure_conv_trace():
    trace = load_trace(SHARED / "azure_llm_inference_2023" / "AzureLLMInferenceTrace_conv.csv")
    assert len(trace) == 19_366
    assert 3500 < trace.duration_s < 3600  # 18:15 to 19:14
    assert trace.input_tokens.mean() == pytest.approx(1155, abs=1)
    assert trace.output_tokens.mean() == pytest.approx(211, abs=1)
    t = arrival_times(f"trace:{trace.path}@2", 1000, seed=0)
    assert (len(t) - 1) / t[-1] == pytest.approx(2)


@needs_shared
@pytest.mark.needs_shared
def test_real_mooncake_conversation_trace():
    trace = load_trace(SHARED / "mooncake_traces" / "conversation_trace.jsonl.gz")
    assert len(trace) == 12_031
    assert 3400 < trace.duration_s < 3600  # about 59 minutes
    assert trace.input_tokens.mean() == pytest.approx(12_035, rel=0.01)
