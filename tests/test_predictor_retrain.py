"""One retrain's candidates (predictor_actor.retrain) on synthetic features: the linear correction
learns what the serving head misses, and is saved and loaded as it scores; a corrected model can
be retrained again; a classification head gets only the fine-tuned candidate."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cluster.rank_agreement import kendall_tau_b  # noqa: E402
from predictor_actor.encoder import EncoderConfig  # noqa: E402
from predictor_actor.head import HeadConfig, ScoringHead  # noqa: E402
from predictor_actor.model import ModelConfig, RankingModel  # noqa: E402
from predictor_actor.retrain import RetrainConfig, linear_correction, retrain  # noqa: E402

ENCODER = EncoderConfig()
RETRAIN = RetrainConfig(min_requests=200, min_holdout=50, epochs=3)


def _untrained(loss: str = "listmle", outputs: int = 1) -> RankingModel:
    """A random head: it ranks the synthetic features below at about chance."""
    torch.manual_seed(0)
    head = ScoringHead(HeadConfig(in_dim=ENCODER.feature_dim, hidden=16, outputs=outputs))
    centers = [float(c) for c in np.linspace(1.0, 6.0, outputs)] if loss == "classification" else []
    edges = [(a + b) / 2 for a, b in zip(centers, centers[1:], strict=False)]
    config = ModelConfig(
        loss=loss,
        encoder=ENCODER,
        head=head.config,
        bucket_edges=edges,
        bucket_centers=centers,
        calibration_scores=[-10.0, 10.0],
        calibration_tokens=[1.0, 1000.0],
    )
    return RankingModel(config, head)


def _traffic(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Features whose answer length follows a linear direction of them, with noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, ENCODER.feature_dim)).astype(np.float32)
    direction = rng.normal(size=ENCODER.feature_dim) / np.sqrt(ENCODER.feature_dim)
    log_tokens = 4.0 + 1.5 * (x @ direction) + rng.normal(scale=0.3, size=n)
    return x, np.maximum(np.rint(np.expm1(log_tokens)), 1).astype(np.int64)


def test_the_linear_correction_learns_what_the_head_misses_and_loads_as_it_scores(tmp_path):
    model = _untrained()
    x, tokens = _traffic(1500)
    corrected = linear_correction(model, x[:1000], tokens[:1000], alpha=100.0)
    assert abs(kendall_tau_b(model.scores_from_features(x[1000:]), tokens[1000:])) < 0.15
    scores = corrected.scores_from_features(x[1000:])
    assert kendall_tau_b(scores, tokens[1000:]) > 0.6
    # its scores are predicted log lengths, and its calibration maps them to tokens
    assert abs(np.median(np.expm1(scores)) / np.median(tokens[1000:]) - 1) < 0.3
    predicted = corrected.tokens_from_scores(scores)
    assert kendall_tau_b(predicted, tokens[1000:]) > 0.6

    corrected.save(tmp_path / "v1")
    loaded = RankingModel.load(tmp_path / "v1")
    assert loaded.config.head.linear_correction
    np.testing.assert_allclose(loaded.scores_from_features(x[1000:]), scores, atol=1e-4)


def test_a_retrain_swaps_the_better_candidate_and_can_retrain_a_corrected_model():
    x, tokens = _traffic(600)
    first = retrain(_untrained(), x, tokens, RETRAIN)
    assert first.kind == "linear correction" and first.better
    assert first.figures()["candidate"] == "linear correction"
    # A corrected head is corrected anew (its MLP kept) or fine-tuned with its correction
    second = retrain(first.candidate, *_traffic(600, seed=2), RETRAIN)
    assert second.kind in ("linear correction", "fine-tuned")
    assert second.candidate.config.head.linear_correction


def test_a_classification_head_gets_only_the_fine_tuned_candidate():
    x, tokens = _traffic(600)
    result = retrain(_untrained("classification", outputs=4), x, tokens, RETRAIN)
    assert result.kind == "fine-tuned"
