"""The prompt-length heuristic: a longer prompt is predicted to get a longer answer.

It is the baseline every learned model is compared with, and the fallback the predictor actor
scores by when no model can be loaded. Score = log1p(prompt characters); predicted answer tokens
= prompt characters / 4 (about one token per four characters of English), clipped to 16..4096.
Crude by design: it needs no model, no tokenizer and no data.
"""

from __future__ import annotations

import numpy as np

from predictor_actor.text import clean_prompt

HEURISTIC_NAME = "prompt-length heuristic: score = log1p(prompt characters)"


def heuristic_scores(prompts: list) -> np.ndarray:
    return np.log1p(np.array([len(clean_prompt(p)) for p in prompts], dtype=np.float64))


def heuristic_lengths(prompts: list) -> np.ndarray:
    chars = np.array([len(clean_prompt(p)) for p in prompts], dtype=np.float64)
    return np.clip(chars / 4.0, 16.0, 4096.0)
