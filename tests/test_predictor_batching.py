"""The batching predictor without Ray: bad prompts, fallback on a missing or corrupt model."""

import asyncio
import shutil

import numpy as np
import pytest

from cluster.rank_agreement import kendall_tau_b
from predictor_actor.batching import BatchingPredictor, PredictorConfig
from predictor_actor.encoder import EncoderConfig, native_bf16
from predictor_actor.heuristic import heuristic_lengths, heuristic_scores
from predictor_actor.metrics import predictor_families
from predictor_actor.model import DEFAULT_MODEL_DIR, ModelLoadError, RankingModel

PROMPTS = ["Write a haiku about rain.", "Explain quantum computing in detail, with examples.", "Hi"]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text here")


def _run(predictor: BatchingPredictor, prompts: list) -> list:
    return asyncio.run(predictor.predict_many(prompts))


@pytest.fixture(scope="module")
def predictor() -> BatchingPredictor:
    return BatchingPredictor(PredictorConfig(max_wait_ms=20, bf16=False))


def test_scores_match_the_model_and_come_back_in_order(predictor):
    preds = _run(predictor, PROMPTS)
    expected = RankingModel.load(DEFAULT_MODEL_DIR).score(PROMPTS)
    np.testing.assert_allclose([p.score for p in preds], expected, atol=1e-4)
    assert not any(p.fallback for p in preds)
    assert all(p.predicted_tokens >= 1 for p in preds)
    assert predictor.health()["status"] == "ok"


def test_int8_and_bf16_together_are_refused_and_int8_is_not_made_bf16():
    with pytest.raises(ValueError, match="choose one"):
        PredictorConfig(quantize=True, bf16=True)
    with pytest.raises(ValueError, match="choose one"):
        EncoderConfig(quantize=True, bf16=True)
    int8 = BatchingPredictor(PredictorConfig(max_wait_ms=20, quantize=True))  # bf16 left to it
    assert int8.health()["encoding"] == "int8"


def test_bf16_encoding_ranks_as_fp32_does():
    prompts = [
        f"{verb} {topic}{detail}"
        for verb in ("Write", "List", "Explain briefly", "Translate", "Summarise")
        for topic in ("the history of Rome", "a sorting function in Python", "why the sky is blue")
        for detail in ("", " in 500 words, with examples and a conclusion.", "?")
    ]
    fp32 = RankingModel.load(DEFAULT_MODEL_DIR).score(prompts)
    bf16 = BatchingPredictor(PredictorConfig(max_wait_ms=20, bf16=True))
    assert bf16.health()["encoding"] == "bf16"
    encoding = {f.name: f for f in predictor_families(bf16.health())}[
        "rankserve_predictor_encoding"
    ]
    assert encoding.samples == [(("bf16",), 1.0)]
    scores = np.array([p.score for p in _run(bf16, prompts)])
    assert not np.array_equal(scores, fp32)  # encoded in bf16 indeed
    assert kendall_tau_b(scores, fp32) > 0.95
    np.testing.assert_allclose(scores, fp32, atol=0.3)
    # the head runs in fp32: a prompt scores (nearly) the same alone as in a batch
    alone = [_run(bf16, [p])[0].score for p in prompts[:5]]
    np.testing.assert_allclose(alone, scores[:5], atol=0.05)


@pytest.mark.parametrize(
    "cpuinfo, native",
    [
        ("flags\t\t: fpu avx2 avx512f avx512_bf16\n", True),
        ("flags\t\t: fpu avx2 amx_bf16 amx_tile\n", True),
        ("Features\t: fp asimd bf16 i8mm\n", True),  # Arm (e.g. Graviton 3)
        ("flags\t\t: fpu avx2 avx512f avx512bw\n", False),
        ("", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert native_bf16(path) is native
    assert native_bf16(tmp_path / "absent") is False


def test_bad_prompts_never_fail_their_batch(predictor):
    bad = ["", "x " * 500_000, b"\xff\xfe bad utf-8", "lone surrogate \ud800", None, Unprintable()]
    preds = _run(predictor, [*PROMPTS, *bad])
    assert len(preds) == len(PROMPTS) + len(bad)
    assert all(np.isfinite(p.score) and np.isfinite(p.predicted_tokens) for p in preds)
    # the unprintable prompt alone is scored by the heuristic; the rest by the model
    assert [p.fallback for p in preds] == [False] * (len(preds) - 1) + [True]
    good = RankingModel.load(DEFAULT_MODEL_DIR).score(PROMPTS)
    np.testing.assert_allclose([p.score for p in preds[: len(PROMPTS)]], good, atol=1e-4)


def _assert_fallback(predictor: BatchingPredictor, reason: str) -> None:
    health = predictor.health()
    assert health["status"] == "degraded" and health["fallback"]
    assert reason in health["error"]
    preds = _run(predictor, PROMPTS)
    assert all(p.fallback for p in preds)
    np.testing.assert_allclose([p.score for p in preds], heuristic_scores(PROMPTS))
    np.testing.assert_allclose([p.predicted_tokens for p in preds], heuristic_lengths(PROMPTS))


def test_missing_model_dir_falls_back_loudly(tmp_path, caplog):
    with caplog.at_level("ERROR"):
        predictor = BatchingPredictor(PredictorConfig(model_dir=str(tmp_path / "nowhere")))
    assert "PREDICTOR MODEL NOT LOADED" in caplog.text
    _assert_fallback(predictor, "does not exist")


@pytest.mark.parametrize(
    ("file", "content", "reason"),
    [
        ("head.safetensors", b"\x00garbage" * 10, "cannot be loaded"),
        ("config.json", b"{not json", "not valid JSON"),
        ("config.json", b'{"format": "something-else/9"}', "unknown model format"),
    ],
)
def test_corrupt_model_dir_falls_back(tmp_path, file, content, reason):
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    (model_dir / file).write_bytes(content)
    with pytest.raises(ModelLoadError, match=reason):
        RankingModel.load(model_dir)
    _assert_fallback(BatchingPredictor(PredictorConfig(model_dir=str(model_dir))), reason)
