"""Plain-Python scoring for the simulator and for batch jobs: no Ray.

Scores and predicted lengths are cached on disk, keyed by the model's files and the prompt's
hash, so repeated simulations of the same workload neither re-encode nor even import torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from predictor_actor.embeddings import default_cache_dir
from predictor_actor.model import (
    CONFIG_FILE,
    DEFAULT_LENGTH_MODEL_DIR,
    DEFAULT_MODEL_DIR,
    WEIGHTS_FILE,
    ModelLoadError,
)
from predictor_actor.text import clean_prompt
from predictor_actor.vector_cache import VectorCache, text_key


def model_files_fingerprint(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            h.update((model_dir / name).read_bytes())
        except OSError as e:
            raise ModelLoadError(f"cannot read {model_dir / name}: {e}") from e
    return h.hexdigest()[:16]


def _cached(model_dir: Path, prompts: list, cache_dir: str | Path | None, what: str) -> np.ndarray:
    texts = [clean_prompt(p) for p in prompts]
    if not texts:
        return np.zeros(0, dtype=np.float64)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache = VectorCache(root / what / model_files_fingerprint(model_dir), 1)
    keys = [text_key(t) for t in texts]
    values, missing = cache.get(keys)
    if missing:
        from predictor_actor.model import RankingModel

        model = RankingModel.load(model_dir)
        todo = list(dict.fromkeys(keys[i] for i in missing))
        first = {keys[i]: i for i in reversed(missing)}
        todo_texts = [texts[first[k]] for k in todo]
        from predictor_actor.embeddings import prompt_features

        scores = model.scores_from_features(
            prompt_features(
                todo_texts, model.config.encoder, cache_dir=root, progress=len(todo) > 256
            )
        )
        result = scores if what == "scores" else model.tokens_from_scores(scores)
        cache.put(todo, result.reshape(-1, 1))
        values, missing = cache.get(keys)
    return values[:, 0].astype(np.float64)


def score_prompts(
    model_dir: str | None, prompts: list[str], cache_dir: str | None = None
) -> np.ndarray:
    """Rank score of each prompt (higher = longer predicted answer), with the model in
    `model_dir` (None: the shipped default ranking model). Raises ModelLoadError when the model
    cannot be loaded: a simulation asked for a model, so it must not silently use another."""
    return _cached(
        Path(model_dir) if model_dir else DEFAULT_MODEL_DIR, prompts, cache_dir, "scores"
    )


def predict_lengths(
    model_dir: str | None, prompts: list[str], cache_dir: str | None = None
) -> np.ndarray:
    """Predicted answer length in tokens of each prompt (for SSJF), with the model in
    `model_dir` (None: the shipped default length regressor). A regression model predicts
    tokens directly; a ranking model maps its score through its training-set calibration."""
    return _cached(
        Path(model_dir) if model_dir else DEFAULT_LENGTH_MODEL_DIR, prompts, cache_dir, "lengths"
    )


class ModelScorer:
    """Trained models as the simulator's `WorkloadScorer`: rank scores from `model_dir` and
    predicted lengths from `length_model_dir` (None: the shipped ranking model and length
    regressor; a ranking model's lengths come from its training-set calibration)."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        length_model_dir: str | Path | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.model_dir = str(model_dir) if model_dir else None
        self.length_model_dir = str(length_model_dir) if length_model_dir else None
        self.cache_dir = cache_dir

    def predict(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return (
            score_prompts(self.model_dir, prompts, self.cache_dir),
            predict_lengths(self.length_model_dir, prompts, self.cache_dir),
        )
