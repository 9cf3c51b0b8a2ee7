"""Training: features of the frozen encoder (cached on disk), a scoring head trained with
ListMLE over lists of prompts (or a baseline loss), the best epoch kept by held-out tau.

Resumable: after every epoch the head, the optimiser and the best state so far are written to
`DIR/checkpoint.pt`; `resume=True` continues from there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cluster.rank_agreement import kendall_tau_b, mean_list_tau
from predictor_actor.embeddings import prompt_features
from predictor_actor.encoder import ENCODER_NAME, EncoderConfig
from predictor_actor.head import (
    LOSSES,
    HeadConfig,
    ScoringHead,
    bucket_of,
    classification_loss,
    listmle_loss,
    regression_loss,
)
from predictor_actor.model import ModelConfig, RankingModel, fit_calibration
from predictor_actor.records import LabelledPrompts, split_by_prompt

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True, slots=True)
class TrainConfig:
    loss: str = "listmle"
    list_size: int = 32  # prompts per ListMLE list (the LTR paper's batch of 32)
    lists_per_step: int = 8  # lists per optimiser step
    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 1e-2
    max_length: int = 256  # encoder truncation, tokens
    # Encoder layers used (EncoderConfig.layers): the first layer alone ranks GPTeacher about
    # as well as all six and encodes ~3x faster (docs/predictor.md, "Speed of the actor").
    # Pooled after the second layer with the textual cues: on the leave-one-dataset-out
    # evaluation the best trade of transfer against speed (docs/predictor.md).
    layers: int = 2
    cues: bool = True
    # int8 encoding: faster, but its activation scale is per chunk, so a prompt's score then
    # depends on the prompts batched with it; off by default.
    quantize: bool = False
    hidden: int = 256
    dropout: float = 0.1
    buckets: int = 8  # classification: length buckets (training-set quantiles of log length)
    val_fraction: float = 0.1  # held out by prompt to pick the best epoch
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.list_size < 2:
            raise ValueError("list_size must be >= 2")
        if self.epochs < 1 or self.lr <= 0 or self.lists_per_step < 1:
            raise ValueError("epochs and lists_per_step must be >= 1 and lr > 0")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")
        _ = self.encoder_config  # validates the truncation and depth

    @property
    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig(
            max_length=self.max_length, layers=self.layers, quantize=self.quantize, cues=self.cues
        )


def _lists(n: int, list_size: int, rng: np.random.Generator) -> np.ndarray:
    """Disjoint random lists [k, list_size] covering the set (the last list is topped up with
    random other prompts so every prompt is seen each epoch)."""
    perm = rng.permutation(n)
    short = -n % list_size
    if short:
        perm = np.concatenate((perm, rng.choice(n, short, replace=False)))
    return perm.reshape(-1, list_size)


def _loss(
    cfg: TrainConfig, head: ScoringHead, x: torch.Tensor, y: torch.Tensor, edges
) -> torch.Tensor:
    if cfg.loss == "listmle":
        k, m = y.shape
        return listmle_loss(head(x.reshape(k * m, -1))[:, 0].reshape(k, m), y)
    out = head(x.reshape(-1, x.shape[-1]))
    y = y.reshape(-1)
    if cfg.loss == "regression":
        return regression_loss(out[:, 0], y)
    return classification_loss(out, bucket_of(y, edges))


def _resumable(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "epochs"}


def _bucket_edges(tokens: np.ndarray, buckets: int) -> tuple[list[float], list[float]]:
    logs = np.log1p(tokens.astype(np.float64))
    edges = np.unique(np.quantile(logs, np.linspace(0, 1, buckets + 1)[1:-1]))
    idx = np.searchsorted(edges, logs, side="left")
    centers = [
        float(logs[idx == b].mean()) if (idx == b).any() else 0.0 for b in range(len(edges) + 1)
    ]
    return edges.tolist(), centers


def train(
    data: LabelledPrompts,
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    cache_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    data_names: list[str] | None = None,
    val_data: LabelledPrompts | None = None,
) -> RankingModel:
    """Train a model on `data` and write it to `out_dir` (config, head weights). The epoch is
    chosen by Kendall tau on `val_data`, or, without it, on a held-out fraction of `data`'s
    prompts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    if val_data is not None:
        train_idx = np.arange(len(data))
        val_idx = np.arange(len(data), len(data) + len(val_data))
        data = LabelledPrompts(
            data.prompts + val_data.prompts,
            np.concatenate((data.output_tokens, val_data.output_tokens)),
            data.sources + val_data.sources,
        )
    else:
        train_idx, val_idx = split_by_prompt(data, config.val_fraction)
    if len(train_idx) < config.list_size or len(val_idx) < 2:
        raise ValueError(
            f"need at least {config.list_size} training and 2 validation prompts, "
            f"got {len(train_idx)} and {len(val_idx)} (of {len(data)})"
        )
    enc_cfg = config.encoder_config
    feats = prompt_features(data.prompts, enc_cfg, cache_dir=cache_dir, progress=progress)
    t_encoded = time.monotonic()
    model, history = fit_head(
        feats[train_idx],
        data.output_tokens[train_idx],
        feats[val_idx],
        data.output_tokens[val_idx],
        config,
        checkpoint=out_dir / CHECKPOINT,
        resume=resume,
        progress=progress,
    )
    val_scores = model.scores_from_features(feats[val_idx])
    training = {
        "data": data_names or sorted({data.sources[i] for i in train_idx}),
        "validation": sorted({Path(data.sources[i]).name for i in val_idx})
        if val_data is not None
        else f"{config.val_fraction:.0%} of the training prompts, split by prompt",
        "prompts": int(len(train_idx) + len(val_idx)),
        "train_prompts": int(len(train_idx)),
        "val_prompts": int(len(val_idx)),
        "encoder": ENCODER_NAME,
        "settings": asdict(config),
        "best_epoch": int(np.argmax([h["val_tau"] for h in history]) + 1),
        "val_kendall_tau": float(max(h["val_tau"] for h in history)),
        "val_mean_list_tau": mean_list_tau(
            val_scores, data.output_tokens[val_idx], config.list_size
        ),
        "encode_seconds": round(t_encoded - t_start, 1),
        "train_seconds": round(time.monotonic() - t_encoded, 1),
        "history": history,
    }
    model = RankingModel(replace(model.config, training=training), model.head)
    model.save(out_dir)
    return model


def fit_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig = TrainConfig(),
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = False,
    warm_start: RankingModel | None = None,
) -> tuple[RankingModel, list[dict]]:
    """Train a scoring head on feature rows and answer lengths; returns the model at the epoch
    with the best validation Kendall tau (length calibration fitted on the training rows) and
    the per-epoch history. `warm_start`: begin from that model's head (its loss, shape and
    feature statistics) rather than from random weights."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    enc_cfg = config.encoder_config
    x_train_t = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    y_train_t = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    y_val = np.asarray(y_val)
    edges, centers = ([], [])
    outputs = 1
    if config.loss == "classification":
        edges, centers = _bucket_edges(np.asarray(y_train), config.buckets)
        outputs = len(centers)
    head_cfg = HeadConfig(
        in_dim=x_train.shape[1], hidden=config.hidden, outputs=outputs, dropout=config.dropout
    )
    if warm_start is not None:
        if (
            warm_start.config.loss != config.loss
            or warm_start.config.head.in_dim != x_train.shape[1]
        ):
            raise ValueError("a warm start needs a model of the same loss and feature width")
        head_cfg = warm_start.config.head
        edges, centers = warm_start.config.bucket_edges, warm_start.config.bucket_centers
    head = ScoringHead(head_cfg)
    if warm_start is not None:
        head.load_state_dict(warm_start.head.state_dict())
    else:
        head.set_feature_stats(x_train_t)
    if (
        config.loss == "regression" and warm_start is None
    ):  # start at the mean, so the steps go into the ordering
        with torch.no_grad():
            head.net[-1].bias.fill_(float(np.log1p(np.asarray(y_train, dtype=np.float64)).mean()))
    if warm_start is not None:
        enc_cfg = warm_start.config.encoder
    model_cfg = ModelConfig(
        loss=config.loss, encoder=enc_cfg, head=head_cfg, bucket_edges=edges, bucket_centers=centers
    )
    model = RankingModel(model_cfg, head)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    edges_t = torch.tensor(edges, dtype=torch.float64)

    start_epoch, best_tau, best_state, history = 0, -2.0, None, []
    if warm_start is not None:  # the start model is a candidate too: never end up worse
        best_tau = kendall_tau_b(model.scores_from_features(x_val), y_val)
        best_state = {k: v.clone() for k, v in head.state_dict().items()}
    if resume and checkpoint is not None and checkpoint.is_file():
        ckpt = torch.load(checkpoint, weights_only=False)
        # More epochs may be asked for on resume; every other setting must match.
        if _resumable(ckpt["train_config"]) != _resumable(asdict(config)) or ckpt["n"] != len(
            y_train
        ):
            raise ValueError(
                f"{checkpoint} was written for other settings or data; drop --resume or the file"
            )
        head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["optimizer"])
        rng = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        start_epoch, best_tau, best_state, history = (
            ckpt["epoch"],
            ckpt["best_tau"],
            ckpt["best_state"],
            ckpt["history"],
        )
        log.info("resuming from %s after epoch %d", checkpoint, start_epoch)

    bar = tqdm(
        range(start_epoch, config.epochs),
        desc=f"training ({config.loss})",
        unit="epoch",
        initial=start_epoch,
        total=config.epochs,
        disable=not progress,
    )
    for epoch in bar:
        head.train()
        lists = _lists(len(y_train_t), config.list_size, rng)
        losses = []
        for start in range(0, len(lists), config.lists_per_step):
            chunk = torch.from_numpy(lists[start : start + config.lists_per_step])
            loss = _loss(config, head, x_train_t[chunk], y_train_t[chunk], edges_t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        head.eval()
        tau = kendall_tau_b(model.scores_from_features(x_val), y_val)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_tau": tau})
        if tau > best_tau or best_state is None:
            best_tau = tau
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        bar.set_postfix(val_tau=f"{tau:.3f}", best=f"{best_tau:.3f}")
        if checkpoint is not None:
            torch.save(
                {
                    "train_config": asdict(config),
                    "n": len(y_train),
                    "epoch": epoch + 1,
                    "head": head.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": rng,
                    "torch_rng": torch.get_rng_state(),
                    "best_tau": best_tau,
                    "best_state": best_state,
                    "history": history,
                },
                checkpoint,
            )
    head.load_state_dict(best_state)
    head.eval()
    cal_scores, cal_tokens = fit_calibration(
        model.scores_from_features(x_train), np.asarray(y_train, dtype=np.float64)
    )
    return RankingModel(
        replace(model_cfg, calibration_scores=cal_scores, calibration_tokens=cal_tokens), head
    ), history
