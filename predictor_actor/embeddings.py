"""Prompt features through an on-disk cache: a frozen encoder never encodes the same prompt
twice (per truncation length), which makes repeated training runs and experiments cheap."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from predictor_actor.encoder import EncoderConfig, PromptEncoder
from predictor_actor.text import clean_prompt
from predictor_actor.vector_cache import VectorCache, text_key

_BLOCK = 512  # prompts encoded between two cache writes


def default_cache_dir() -> Path:
    env = os.environ.get("RANKSERVE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "rankserve"


def prompt_features(
    prompts: list,
    config: EncoderConfig,
    cache_dir: str | Path | None = None,
    encoder: PromptEncoder | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Feature rows for `prompts`, encoding only those not in the cache."""
    texts = [clean_prompt(p) for p in prompts]
    cache = VectorCache(
        Path(cache_dir or default_cache_dir()) / "features" / config.cache_name,
        config.feature_dim,
    )
    keys = [text_key(t) for t in texts]
    out, missing = cache.get(keys)
    if not missing:
        return out
    # Encode each distinct prompt once.
    todo = list(dict.fromkeys(keys[i] for i in missing))
    first = {}
    for i in missing:
        first.setdefault(keys[i], i)
    encoder = encoder if encoder is not None and encoder.config == config else PromptEncoder(config)
    bar = tqdm(
        total=len(todo), desc=f"encoding ({config.cache_name})", unit="prompt", disable=not progress
    )
    for start in range(0, len(todo), _BLOCK):
        block = todo[start : start + _BLOCK]
        feats = encoder.features([texts[first[k]] for k in block])
        cache.put(block, feats)
        bar.update(len(block))
    bar.close()
    out, missing = cache.get(keys)
    assert not missing
    return out
