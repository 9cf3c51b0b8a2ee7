"""ListMLE and the baselines learn a learnable ordering; training resumes from its checkpoint."""

import numpy as np
import pytest
import torch

from cluster.rank_agreement import kendall_tau_b
from predictor_actor.head import listmle_loss
from predictor_actor.train import TrainConfig, fit_head


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features whose hidden direction decides the answer length (plus a little noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 24)).astype(np.float32)
    w = np.random.default_rng(99).normal(size=24)
    lengths = np.maximum(
        1, np.round(np.exp(4 + 0.6 * (x @ w) / np.sqrt(24) + 0.02 * rng.normal(size=n)))
    )
    return x, lengths.astype(np.int64)


def test_listmle_gradient_raises_longer_answers():
    scores = torch.zeros(1, 4, requires_grad=True)
    listmle_loss(scores, torch.tensor([[5, 40, 10, 80]])).backward()
    # descending the gradient raises the score of the longest answer most
    assert np.argsort(-(-scores.grad[0]).numpy())[0] == 3
    assert (-scores.grad[0])[3] > 0 > (-scores.grad[0])[0]


def test_listmle_loss_is_lowest_for_the_true_order():
    lengths = torch.tensor([[5, 40, 10, 80]])
    right = listmle_loss(torch.tensor([[0.0, 2.0, 1.0, 3.0]]) * 5, lengths)
    wrong = listmle_loss(torch.tensor([[3.0, 1.0, 2.0, 0.0]]) * 5, lengths)
    assert right < wrong


@pytest.mark.parametrize("loss", ["listmle", "regression", "classification"])
def test_training_learns_synthetic_ordering(loss):
    x, y = _synthetic(2048, 0)
    xv, yv = _synthetic(512, 1)
    config = TrainConfig(loss=loss, epochs=15, hidden=64, lr=3e-3)
    model, history = fit_head(x, y, xv, yv, config)
    tau = kendall_tau_b(model.scores_from_features(xv), yv)
    assert tau > (0.9 if loss != "classification" else 0.75), history[-1]
    # lengths predicted through the calibration follow the scores
    tokens = model.tokens_from_scores(model.scores_from_features(xv))
    assert kendall_tau_b(tokens, yv) > 0.7


def test_resume_continues_from_checkpoint(tmp_path):
    x, y = _synthetic(512, 2)
    xv, yv = _synthetic(128, 3)
    cfg4 = TrainConfig(epochs=4, hidden=16)
    _, uninterrupted = fit_head(x, y, xv, yv, cfg4, checkpoint=tmp_path / "a.pt")
    # stopped after 2 epochs, then resumed up to 4: the same epochs as one run of 4
    fit_head(x, y, xv, yv, TrainConfig(epochs=2, hidden=16), checkpoint=tmp_path / "b.pt")
    _, resumed = fit_head(x, y, xv, yv, cfg4, checkpoint=tmp_path / "b.pt", resume=True)
    assert [h["val_tau"] for h in resumed] == pytest.approx([h["val_tau"] for h in uninterrupted])
    with pytest.raises(ValueError, match="other settings"):
        fit_head(
            x,
            y,
            xv,
            yv,
            TrainConfig(epochs=4, hidden=32),
            checkpoint=tmp_path / "b.pt",
            resume=True,
        )
