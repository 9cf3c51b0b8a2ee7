"""One retrain of a serving model on its own served traffic: two candidates trained on the older
labels, the serving model's head fine-tuned (warm-started) with its own loss, and its MLP kept
with a ridge-fitted linear correction on top (a few hundred labels fit the correction without
overfitting, where fine-tuning the whole head on them is noisy); the better of the two and the
serving model are judged on the most recent labels (a winning correction is then fitted again
on all of them).

The held-out slice is the newest traffic (not a random sample): what the next requests look
like is best told by the last ones, and a candidate that only fits older traffic must not win.
The candidate's epoch is chosen on the newest part of its training labels, never on the slice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from cluster.rank_agreement import kendall_tau_b

if TYPE_CHECKING:
    from predictor_actor.model import RankingModel


@dataclass(frozen=True, slots=True)
class RetrainConfig:
    min_requests: int = 200  # labels needed before the first retrain
    holdout_fraction: float = 0.2  # newest share of the labels that judges the candidate
    min_holdout: int = 50
    min_gain: float = 0.0  # the candidate's tau must beat the serving one's by more than this
    epochs: int = 20
    lr: float = 5e-4
    list_size: int = 32
    seed: int = 0
    # The correction's ridge penalty (on standardised features): chosen on replays of AlpacaEval
    # (Llama-3-8B, GPT-4 Turbo answers) and arena-hard (GPT-3.5), not on the benchmark's set.
    ridge_alpha: float = 3000.0

    def __post_init__(self) -> None:
        if not 0 < self.holdout_fraction < 1 or self.min_holdout < 2:
            raise ValueError("holdout_fraction must be in (0, 1) and min_holdout >= 2")
        if self.min_requests < self.min_holdout + 2 * self.list_size:
            raise ValueError("min_requests must leave two lists of training labels")
        if self.ridge_alpha <= 0:
            raise ValueError("ridge_alpha must be > 0")


@dataclass(frozen=True, slots=True)
class RetrainResult:
    candidate: RankingModel
    current_tau: float
    candidate_tau: float
    train: int
    holdout: int
    min_gain: float
    kind: str  # the candidate's: "fine-tuned" or "linear correction"

    @property
    def better(self) -> bool:
        return bool(self.candidate_tau > self.current_tau + self.min_gain)

    def figures(self) -> dict:
        return {
            "current_tau": round(self.current_tau, 4),
            "candidate_tau": round(self.candidate_tau, 4),
            "train": self.train,
            "holdout": self.holdout,
            "candidate": self.kind,
        }


def _tau(model: RankingModel, x: np.ndarray, y: np.ndarray) -> float:
    tau = kendall_tau_b(model.scores_from_features(x), y)
    return -1.0 if np.isnan(tau) else float(tau)


def retrain(
    current: RankingModel, features: np.ndarray, tokens: np.ndarray, config: RetrainConfig
) -> RetrainResult:
    """`features` and `tokens` in arrival order (oldest first)."""
    from predictor_actor.train import TrainConfig, fit_head  # torch: only where training runs

    n = len(tokens)
    hold = max(config.min_holdout, int(n * config.holdout_fraction))
    if n - hold < 2 * config.list_size:
        raise ValueError(f"{n} labels are too few to retrain on")
    x_train, y_train = features[: n - hold], tokens[: n - hold]
    x_hold, y_hold = features[n - hold :], tokens[n - hold :]
    pick = max(2, len(y_train) // 7)  # newest ~15% of the training labels choose the epoch
    train_config = TrainConfig(
        loss=current.config.loss,
        epochs=config.epochs,
        lr=config.lr,
        list_size=config.list_size,
        seed=config.seed,
    )
    fine_tuned, _ = fit_head(
        x_train[:-pick],
        y_train[:-pick],
        x_train[-pick:],
        y_train[-pick:],
        train_config,
        warm_start=current,
    )
    candidates = {"fine-tuned": fine_tuned}
    if current.config.head.outputs == 1:  # not a classification head's bucket logits
        candidates["linear correction"] = linear_correction(
            current, x_train, y_train, config.ridge_alpha
        )
    taus = {kind: _tau(model, x_hold, y_hold) for kind, model in candidates.items()}
    kind = max(taus, key=taus.__getitem__)
    chosen = candidates[kind]
    if kind == "linear correction":  # judged; then fitted on every label, the newest included
        chosen = linear_correction(current, features, tokens, config.ridge_alpha)
    return RetrainResult(
        chosen,
        _tau(current, x_hold, y_hold),
        taus[kind],
        int(len(y_train)),
        int(hold),
        config.min_gain,
        kind,
    )


def linear_correction(
    current: RankingModel, features: np.ndarray, tokens: np.ndarray, alpha: float
) -> RankingModel:
    """The serving model's MLP, scaled, plus a linear term on its standardised features, the
    two fitted by ridge regression to log1p(tokens); scores are then predicted log lengths."""
    import torch

    from predictor_actor.head import ScoringHead
    from predictor_actor.model import RankingModel, fit_calibration

    old = current.head  # in eval mode (RankingModel): no dropout
    with torch.inference_mode():
        z = old.standardise(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
        mlp = old.net(z)[:, 0]
    columns = np.c_[z.double().numpy(), mlp.double().numpy()]
    target = np.log1p(np.asarray(tokens, dtype=np.float64))
    centre, mean = columns.mean(0), target.mean()
    c = columns - centre
    beta = np.linalg.solve(c.T @ c + alpha * np.eye(c.shape[1]), c.T @ (target - mean))
    intercept = float(mean - centre @ beta)
    config = replace(old.config, linear_correction=True)
    head = ScoringHead(config)
    head.load_state_dict(old.state_dict(), strict=False)  # a first correction starts at zero
    with torch.no_grad():
        head.net_scale.fill_(float(beta[-1]))
        head.correction.weight.copy_(torch.from_numpy(beta[None, :-1]))
        head.correction.bias.fill_(intercept)
    calibration = fit_calibration(columns @ beta + intercept, np.asarray(tokens, dtype=np.float64))
    model_config = replace(
        current.config,
        head=config,
        calibration_scores=calibration[0],
        calibration_tokens=calibration[1],
    )
    return RankingModel(model_config, head)
