"""The scoring head on top of the encoder's features, and the training objectives it is
trained with: ListMLE ranking (the default, Fu et al. 2024), and the two baselines of the LTR
paper, pointwise regression on log length and length-bucket classification."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

LOSSES = ("listmle", "regression", "classification")


@dataclass(frozen=True, slots=True)
class HeadConfig:
    in_dim: int
    hidden: int = 256  # 0: a linear head
    outputs: int = 1  # classification: one logit per length bucket
    dropout: float = 0.1
    # A linear term on the standardised features beside the MLP, which scales it:
    # score = net_scale x MLP + linear (the online learner's ridge fit, predictor_actor.retrain).
    linear_correction: bool = False


class ScoringHead(nn.Module):
    """Standardise the features (statistics of the training set, stored with the weights),
    then a one-hidden-layer MLP."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(config.in_dim))
        self.register_buffer("feature_std", torch.ones(config.in_dim))
        if config.hidden:
            self.net = nn.Sequential(
                nn.Linear(config.in_dim, config.hidden),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.hidden, config.outputs),
            )
        else:
            self.net = nn.Sequential(
                nn.Dropout(config.dropout), nn.Linear(config.in_dim, config.outputs)
            )
        if config.linear_correction:
            self.register_buffer("net_scale", torch.ones(()))
            self.correction = nn.Linear(config.in_dim, config.outputs)
            nn.init.zeros_(self.correction.weight)
            nn.init.zeros_(self.correction.bias)

    def set_feature_stats(self, features: torch.Tensor) -> None:
        self.feature_mean.copy_(features.mean(0))
        # MiniLM has a few output dimensions that are ~0 for every prompt; dividing by their
        # spread would turn numerical noise (int8, padding, a fine-tuned encoder) into huge
        # inputs. A floor at a tenth of the typical spread keeps them harmless.
        std = features.std(0)
        self.feature_std.copy_(std.clamp(min=float(0.1 * std.median().clamp(min=1e-6))))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.standardise(features)
        if self.config.linear_correction:
            return self.net_scale * self.net(z) + self.correction(z)
        return self.net(z)


def listmle_loss(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ListMLE (Xia et al. 2008) over lists: scores and lengths of shape [lists, list_size].

    The negative log-likelihood of the true order (longest first) under the Plackett-Luce model
    of the scores. Ties in length are broken at random, so no tied order is favoured.
    """
    jitter = torch.rand_like(lengths, dtype=torch.float32) * 1e-3
    order = torch.argsort(lengths.float() + jitter, dim=1, descending=True)
    s = torch.gather(scores, 1, order)
    # log sum_{j >= i} exp(s_j): reversed cumulative logsumexp
    tail = torch.logcumsumexp(s.flip(1), dim=1).flip(1)
    return (tail - s).sum(1).mean()


def regression_loss(pred: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(pred, torch.log1p(lengths.float()))


def classification_loss(logits: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, buckets)


def bucket_of(lengths: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bucket index of each length; `edges` are the inner boundaries in log1p(tokens)."""
    return torch.bucketize(torch.log1p(lengths.float()), edges)


def scores_from_outputs(
    outputs: torch.Tensor, loss: str, bucket_centers: torch.Tensor | None
) -> torch.Tensor:
    """One rank score per prompt, higher = longer answer. Regression: predicted log1p(tokens);
    classification: the expected log1p(tokens) under the predicted bucket probabilities."""
    if loss == "classification":
        assert bucket_centers is not None
        return torch.softmax(outputs, dim=-1) @ bucket_centers
    return outputs[..., 0]
