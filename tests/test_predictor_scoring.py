"""The simulator's scoring API and the shipped models."""

import json

import numpy as np

from cluster.rank_agreement import kendall_tau_b
from predictor_actor.model import DEFAULT_LENGTH_MODEL_DIR, DEFAULT_MODEL_DIR, RankingModel
from predictor_actor.records import load_labelled
from predictor_actor.scoring import predict_lengths, score_prompts
from tests.support import PREDICTOR_FIXTURE as FIXTURE


def test_shipped_models_are_small_documented_and_redistributable():
    for directory, loss in (
        (DEFAULT_MODEL_DIR, "listmle"),
        (DEFAULT_LENGTH_MODEL_DIR, "regression"),
    ):
        files = {p.name: p.stat().st_size for p in directory.iterdir()}
        assert set(files) == {"config.json", "head.safetensors", "MODEL_CARD.md"}
        assert sum(files.values()) < 5 * 2**20
        config = json.loads((directory / "config.json").read_text())
        assert config["loss"] == loss
        # redistributable training data only: never the CC BY-NC sets
        trained_on = config["training"]["data"]
        assert trained_on and not any(
            name.startswith(("alpaca_eval", "code_alpaca")) for name in trained_on
        ), trained_on
        assert "Held-out quality" in (directory / "MODEL_CARD.md").read_text()


def test_score_prompts_and_predict_lengths_are_cached(tmp_path):
    data = load_labelled([FIXTURE])
    prompts = data.prompts[:64]
    scores = score_prompts(None, prompts, cache_dir=str(tmp_path))
    np.testing.assert_allclose(scores, RankingModel.load().score(prompts), atol=1e-4)
    assert kendall_tau_b(scores, data.output_tokens[:64]) > 0.4
    shards = sorted((tmp_path / "scores").rglob("shard-*.npz"))
    assert len(shards) == 1
    # the second call reads the cache: same values, nothing new written
    np.testing.assert_array_equal(score_prompts(None, prompts, cache_dir=str(tmp_path)), scores)
    assert sorted((tmp_path / "scores").rglob("shard-*.npz")) == shards

    lengths = predict_lengths(None, prompts, cache_dir=str(tmp_path))
    assert lengths.shape == (64,) and (lengths >= 1).all()
    assert kendall_tau_b(lengths, data.output_tokens[:64]) > 0.4
    # a ranking model predicts lengths through its calibration, in the order of its scores
    ranked = predict_lengths(str(DEFAULT_MODEL_DIR), prompts, cache_dir=str(tmp_path))
    assert kendall_tau_b(ranked, scores) > 0.95
    assert score_prompts(None, [], cache_dir=str(tmp_path)).shape == (0,)
