"""`python -m benchmarks.bench_predictor finetune` and `train-time`: fine-tuning the encoder
against the frozen one within the training budget, and the wall time of training on 10k
prompts."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.bench_predictor import _load
from benchmarks.prompt_sets import (
    GPTEACHER,
    prompt_file,
)
from benchmarks.report import update_section
from cluster.rank_agreement import kendall_tau_b
from predictor_actor.model import DEFAULT_MODEL_DIR, RankingModel
from predictor_actor.records import LabelledPrompts


def finetune(minutes: float, prompts: int, max_length: int, encoder_lr: float) -> None:
    """Fine-tune the encoder and head together (ListMLE, lists of 32), starting from the shipped
    frozen-encoder model, for at most `minutes` of wall time on `prompts` training prompts;
    compare held-out tau with the frozen model's at the same truncation."""
    import torch

    from predictor_actor.encoder import PromptEncoder, length_feature
    from predictor_actor.head import listmle_loss
    from predictor_actor.prompt_cues import prompt_cues
    from predictor_actor.text import clean_prompt

    train_data, val_data = _load(GPTEACHER, "train"), _load(GPTEACHER, "val")
    test_data = _load(GPTEACHER, "test")
    rng = np.random.default_rng(0)
    train_data = train_data.subset(rng.permutation(len(train_data))[:prompts])
    frozen = RankingModel.load(DEFAULT_MODEL_DIR)
    # the shipped model's depth and features, at the truncation asked for
    enc_cfg = replace(frozen.config.encoder, max_length=max_length)

    def tau_of(model: RankingModel, encoder: PromptEncoder, data: LabelledPrompts) -> float:
        encoder.model.eval()
        return kendall_tau_b(
            model.scores_from_features(encoder.features(data.prompts)), data.output_tokens
        )

    encoder = PromptEncoder(enc_cfg)
    frozen_val = tau_of(frozen, encoder, val_data)
    frozen_test = tau_of(frozen, encoder, test_data)
    print(f"frozen at truncation {max_length}: val {frozen_val:.3f}, test {frozen_test:.3f}")
    head = frozen.head
    model = RankingModel(frozen.config, head, encoder)
    opt = torch.optim.AdamW(
        [
            {"params": encoder.model.parameters(), "lr": encoder_lr},
            {"params": head.parameters(), "lr": 1e-4},
        ],
        weight_decay=0.01,
    )
    texts = [clean_prompt(p) for p in train_data.prompts]
    lengths = torch.from_numpy(train_data.output_tokens)
    list_size, lists_per_step = 32, 8
    t0 = time.monotonic()
    deadline = t0 + minutes * 60
    history, seen, epoch = [], 0, 0
    while time.monotonic() < deadline:
        epoch += 1
        order = rng.permutation(len(texts))
        usable = len(order) - len(order) % (list_size * lists_per_step)
        for start in range(0, usable, list_size * lists_per_step):
            if time.monotonic() >= deadline:
                break
            idx = order[start : start + list_size * lists_per_step]
            # Dropout stays off in the encoder: the head standardises features by their frozen
            # statistics, and dropout noise on dimensions of tiny spread blows the scores up.
            encoder.model.eval()
            head.train()
            batch = [texts[i] for i in idx]
            pooled = encoder.pooled(batch)
            extra = [torch.from_numpy(length_feature(batch)).unsqueeze(1)]
            if enc_cfg.cues:
                extra.append(torch.from_numpy(prompt_cues(batch)))
            feats = torch.cat([pooled, *extra], dim=1)
            scores = head(feats)[:, 0].reshape(lists_per_step, list_size)
            loss = listmle_loss(scores, lengths[idx].reshape(lists_per_step, list_size))
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(idx)
            print(
                f"epoch {epoch}, {seen} prompts, {time.monotonic() - t0:.0f} s, loss {loss.item():.2f}",
                flush=True,
            )
        head.eval()
        val = tau_of(model, encoder, val_data)
        history.append((epoch, seen, time.monotonic() - t0, val))
        print(f"after epoch {epoch}: val tau {val:.3f}", flush=True)
    test = tau_of(model, encoder, test_data)
    lines = [
        f"Fine-tuning the encoder (the shipped model's {enc_cfg.layers} layers, learning rate "
        f"{encoder_lr:g}) and the head "
        f"together with ListMLE (lists of 32, 8 lists per step), starting from the shipped "
        f"frozen-encoder model, on {len(texts)} GPTeacher training prompts at truncation "
        f"{max_length}, for at most {minutes:g} minutes of wall time (the training budget for "
        "10k prompts), 1 torch thread on the shared 2-core machine (other jobs running).",
        "",
        "| model | prompts seen | wall time (s) | val tau | test tau |",
        "|---|---:|---:|---:|---:|",
        f"| frozen encoder (shipped) | - | - | {frozen_val:.3f} | {frozen_test:.3f} |",
    ]
    for ep, n, t, v in history[:-1]:
        lines.append(f"| fine-tuned, after pass {ep} | {n} | {t:.0f} | {v:.3f} | |")
    ep, n, t, v = history[-1]
    lines.append(f"| fine-tuned, end of budget | {n} | {t:.0f} | {v:.3f} | {test:.3f} |")
    print("\n".join(lines))
    update_section("predictor-finetune", "\n".join(lines))


def train_time(prompts: int) -> None:
    """Wall time of `rankserve predictor train` on `prompts` GPTeacher prompts from a cold
    embedding cache (encoding included), with the default settings."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        src = prompt_file(GPTEACHER, "train").read_text().splitlines()[:prompts]
        data.write_text("\n".join(src) + "\n")
        cmd = [
            "rankserve",
            "predictor",
            "train",
            "--data",
            str(data),
            "--out",
            f"{tmp}/model",
            "--cache-dir",
            f"{tmp}/cache",
        ]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True)
        wall = time.monotonic() - t0
        training = RankingModel.load(f"{tmp}/model").config.training
    lines = [
        f"`rankserve predictor train` on the first {len(src)} prompts of the GPTeacher training "
        "split, cold embedding cache, default settings (ListMLE, truncation 256, 40 epochs), "
        "2 CPU cores, no other job running; total wall includes starting the CLI.",
        "",
        "| prompts | encoding (s) | training (s) | total wall (s) | validation tau |",
        "|---:|---:|---:|---:|---:|",
        f"| {len(src)} | {training['encode_seconds']:.0f} | {training['train_seconds']:.0f} | "
        f"{wall:.0f} | {training['val_kendall_tau']:.3f} |",
    ]
    print("\n".join(lines))
    update_section("predictor-train-time", "\n".join(lines))
