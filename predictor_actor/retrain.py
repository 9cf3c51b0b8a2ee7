"""One retrain of a serving model on its own served traffic: a candidate warm-started from the
serving model, trained on the older labels, and both judged on the most recent ones.

The held-out slice is the newest traffic (not a random sample): what the next requests look
like is best told by the last ones, and a candidate that only fits older traffic must not win.
The candidate's epoch is chosen on the newest part of its training labels, never on the slice.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    def __post_init__(self) -> None:
        if not 0 < self.holdout_fraction < 1 or self.min_holdout < 2:
            raise ValueError("holdout_fraction must be in (0, 1) and min_holdout >= 2")
        if self.min_requests < self.min_holdout + 2 * self.list_size:
            raise ValueError("min_requests must leave two lists of training labels")


@dataclass(frozen=True, slots=True)
class RetrainResult:
    candidate: RankingModel
    current_tau: float
    candidate_tau: float
    train: int
    holdout: int
    min_gain: float

    @property
    def better(self) -> bool:
        return bool(self.candidate_tau > self.current_tau + self.min_gain)

    def figures(self) -> dict:
        return {
            "current_tau": round(self.current_tau, 4),
            "candidate_tau": round(self.candidate_tau, 4),
            "train": self.train,
            "holdout": self.holdout,
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
    candidate, _ = fit_head(
        x_train[:-pick],
        y_train[:-pick],
        x_train[-pick:],
        y_train[-pick:],
        train_config,
        warm_start=current,
    )
    return RetrainResult(
        candidate,
        _tau(current, x_hold, y_hold),
        _tau(candidate, x_hold, y_hold),
        int(len(y_train)),
        int(hold),
        config.min_gain,
    )
