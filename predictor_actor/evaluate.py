"""How well a model's scores order a labelled file: the figures `rankserve predictor eval`
prints and the benchmarks report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cluster.rank_agreement import kendall_tau_b, mean_list_tau, spearman
from predictor_actor.embeddings import prompt_features
from predictor_actor.heuristic import heuristic_scores
from predictor_actor.model import RankingModel
from predictor_actor.records import LabelledPrompts


def rank_metrics(scores: np.ndarray, tokens: np.ndarray, list_size: int = 32) -> dict:
    return {
        "kendall_tau": kendall_tau_b(scores, tokens),
        "mean_list_tau": mean_list_tau(scores, tokens, list_size),
        "spearman": spearman(scores, tokens),
        "n": int(len(tokens)),
    }


def model_scores(
    model: RankingModel,
    data: LabelledPrompts,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> np.ndarray:
    feats = prompt_features(
        data.prompts,
        model.config.encoder,
        cache_dir=cache_dir,
        encoder=model._encoder,
        progress=progress,
    )
    return model.scores_from_features(feats)


def evaluate(
    model: RankingModel,
    data: LabelledPrompts,
    cache_dir: str | Path | None = None,
    list_size: int = 32,
    progress: bool = False,
) -> dict:
    """Rank metrics of the model and, for comparison, of the prompt-length heuristic."""
    scores = model_scores(model, data, cache_dir, progress)
    out = rank_metrics(scores, data.output_tokens, list_size)
    heur = heuristic_scores(data.prompts)
    out["heuristic_kendall_tau"] = kendall_tau_b(heur, data.output_tokens)
    out["loss"] = model.config.loss
    out["max_length"] = model.config.encoder.max_length
    return out
