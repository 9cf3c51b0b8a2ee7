"""The calibrated step-time model and its shipped profiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.sim.step_time import (
    PROFILES_PATH,
    StepTimeModel,
    StepTimeProfile,
    available_profiles,
    kv_blocks_from_memory,
    load_profile,
)

REPO = Path(__file__).resolve().parents[1]
VIDUR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "vidur_profiles"
SHIPPED = ("a100-llama3-8b", "h100-llama3-8b", "a100-llama3-70b-tp4", "h100-llama3-70b-tp4")
FIT_REPORT = json.loads(PROFILES_PATH.read_text())["fit_report"]


def ms(model: StepTimeModel, *args: int) -> float:
    return model.step_seconds(*args) * 1e3


def test_shipped_profiles_load() -> None:
    assert set(SHIPPED) <= set(available_profiles())
    for name in SHIPPED:
        profile = load_profile(name)
        assert profile.name == name
        assert "microsoft/vidur" in profile.source
        assert profile.block_size == 16 and profile.max_model_len == 8192


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="a100-llama3-8b"):
        load_profile("tpu-llama3-8b")


def test_empty_step_takes_no_time() -> None:
    assert StepTimeModel(load_profile("a100-llama3-8b")).step_seconds(0, 0, 0) == 0.0


@pytest.mark.parametrize("name", SHIPPED)
@given(
    base=st.tuples(
        st.integers(0, 8192),  # prefill tokens
        st.integers(0, 256),  # decode seqs
        st.integers(0, 2_000_000),  # decode context tokens
        st.integers(0, 8192**2),  # sum of chunk^2
        st.integers(0, 8192 * 8192),  # sum of chunk * cached
        st.integers(0, 16),  # prefills
    ),
    which=st.integers(0, 5),
    more=st.integers(1, 4096),
)
def test_step_time_is_monotone_in_each_input(name: str, base: tuple, which: int, more: int) -> None:
    model = StepTimeModel(load_profile(name))
    bigger = list(base)
    bigger[which] += more
    assert model.step_seconds(*bigger) >= model.step_seconds(*base)


@pytest.mark.parametrize("name", SHIPPED)
def test_single_decode_sits_on_the_floor(name: str) -> None:
    p = load_profile(name)
    assert p.intercept_ms + p.per_token_ms * 1 < p.floor_ms
    model = StepTimeModel(p)
    fixed = p.floor_ms + p.cpu_base_ms + p.cpu_per_seq_ms + p.lm_head_ms + p.decode_seq_ms
    assert ms(model, 0, 1, 1024) == pytest.approx(fixed + 1024 * p.decode_ctx_ms, rel=1e-9)


def test_prefill_2048_on_a100_matches_the_profiled_tables() -> None:
    # Vidur's composition for one 2048-token prompt on A100 Llama-3-8B TP1: the 9 non-attention
    # ops of mlp.csv at 2048 tokens summed x 32 layers = 143.68 ms, plus 32 x 0.701 ms of
    # prefill attention (legacy table, 32 q heads per GPU as in 8B TP1), plus CPU and LM head.
    p = load_profile("a100-llama3-8b")
    tables = 143.68 + 32 * 0.701 + p.cpu_base_ms + p.cpu_per_seq_ms + p.lm_head_ms
    got = ms(StepTimeModel(p), 2048, 0, 0, 2048**2, 0, 1)
    assert got == pytest.approx(tables, rel=0.05)


def test_layer_fit_matches_readme_anchors() -> None:
    # The data set README's non-attention anchors (fit over 1024..8192 tokens); ours fits the
    # whole 1..8192 range, so agree within 10%.
    readme = {"a100-llama3-8b": (9.9, 66.2), "h100-llama3-8b": (5.9, 22.8)}
    for name, (floor, slope_us) in readme.items():
        rep = FIT_REPORT[name]
        assert rep["layers_floor_ms"] == pytest.approx(floor, rel=0.10)
        assert rep["layers_slope_us_per_token"] == pytest.approx(slope_us, rel=0.10)
        assert rep["layers_mape"] < 0.06


def test_decode_attention_matches_readme_anchors() -> None:
    # Legacy A100 table, 4 KV heads per GPU: 128 seqs x 1024 context take 0.192 ms per layer;
    # 8B at TP1 has 8 KV heads per GPU, so twice the KV bytes to read.
    # The attention kernel's fixed cost per layer is folded into the floor.
    p = load_profile("a100-llama3-8b")
    fixed = (p.floor_ms - FIT_REPORT[p.name]["layers_floor_ms"]) / p.num_layers
    per_layer_4kv = (p.decode_ctx_ms * 128 * 1024 + p.decode_seq_ms * 128) / p.num_layers / 2
    per_layer_4kv += fixed
    assert per_layer_4kv == pytest.approx(0.192, rel=0.10)
    # Third-party copy of Vidur's 8B A100 table (README): 2 KV heads per GPU, 256 seqs x 6400
    # context, 1.06 ms per layer; 70B at TP4 also has 2 KV heads per GPU.
    p = load_profile("a100-llama3-70b-tp4")
    fixed = (p.floor_ms - FIT_REPORT[p.name]["layers_floor_ms"]) / p.num_layers
    per_layer_2kv = (p.decode_ctx_ms * 256 * 6400 + p.decode_seq_ms * 256) / p.num_layers + fixed
    assert per_layer_2kv == pytest.approx(1.06, rel=0.10)


def test_h100_is_faster_than_a100() -> None:
    for model in ("llama3-8b", "llama3-70b-tp4"):
        a100 = StepTimeModel(load_profile(f"a100-{model}"))
        h100 = StepTimeModel(load_profile(f"h100-{model}"))
        for step in ((0, 1, 512), (0, 256, 256 * 1024), (2048, 0, 0, 2048**2, 0, 1)):
            assert h100.step_seconds(*step) < a100.step_seconds(*step)


def test_kv_memory_model_follows_vllm() -> None:
    p = load_profile("a100-llama3-8b")
    assert p.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # K and V, layers, KV heads, head dim, fp16
    assert 25_000 <= p.num_kv_blocks <= 30_000
    assert p.num_kv_blocks == kv_blocks_from_memory(
        p.gpu_memory_gib,
        p.gpu_memory_utilization,
        p.weight_bytes,
        p.reserve_gib,
        p.kv_bytes_per_token,
        p.block_size,
    )
    tp4 = load_profile("a100-llama3-70b-tp4")
    assert tp4.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 // 4
    assert tp4.weight_bytes == pytest.approx(70.55e9 * 2 / 4, rel=0.01)
    with pytest.raises(ValueError, match="do not fit"):
        kv_blocks_from_memory(16.0, 0.9, p.weight_bytes, 2.0, p.kv_bytes_per_token, 16)


def test_profile_file_path_loads(tmp_path: Path) -> None:
    data = load_profile("a100-llama3-8b").to_dict()
    data.update(name="cpu-tiny", floor_ms=3.0, intercept_ms=1.0, per_token_ms=0.5)
    del data["num_kv_blocks"]  # derived from the memory model when a file leaves it out
    path = tmp_path / "cpu-tiny.json"
    path.write_text(json.dumps(data))
    profile = load_profile(str(path))
    assert profile.name == "cpu-tiny"
    assert profile.num_kv_blocks == load_profile("a100-llama3-8b").num_kv_blocks
    assert isinstance(profile, StepTimeProfile)


def test_bad_profile_files_are_refused(tmp_path: Path) -> None:
    data = load_profile("a100-llama3-8b").to_dict()
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**data, "speed": 3}))
    with pytest.raises(ValueError, match="unknown step-time profile fields: speed"):
        load_profile(str(path))
    path.write_text(json.dumps({**data, "per_token_ms": -1.0}))
    with pytest.raises(ValueError, match="per_token_ms must be >= 0"):
        load_profile(str(path))
    with pytest.raises(ValueError, match="does not exist"):
        load_profile(str(tmp_path / "missing.json"))


@pytest.mark.needs_shared
@pytest.mark.skipif(not VIDUR.is_dir(), reason="../shared/datasets/vidur_profiles is absent")
def test_fitting_script_reproduces_shipped_profiles(tmp_path: Path) -> None:
    out = tmp_path / "profiles.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fit_step_time.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "anchor 2048-token prefill" in run.stdout
    fitted = json.loads(out.read_text())
    shipped = json.loads(PROFILES_PATH.read_text())
    assert fitted["profiles"].keys() == shipped["profiles"].keys()
    for name, profile in shipped["profiles"].items():
        for key, value in profile.items():
            if isinstance(value, float):
                assert fitted["profiles"][name][key] == pytest.approx(value, rel=1e-4), key
            else:
                assert fitted["profiles"][name][key] == value, key
