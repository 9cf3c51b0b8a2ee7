"""`python -m benchmarks.bench_predictor transfer`: leave-one-dataset-out. For each data set in
../shared, the shipped recipe trained on the shipped training data without that data set,
tested on all of it; the old recipe (first layer, no cues, one model's arena-hard labels) the
same way, side by side. This is the figure that says how a new deployment's traffic, unlike
anything trained on, will be ranked on the first request."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from benchmarks.bench_predictor import CACHE, RUNS, _fmt, _load, _unseen
from benchmarks.prompt_sets import (
    ALPACA_GPT4,
    ALPACA_GPT4_TURBO,
    ALPACA_LLAMA3_8B,
    ALPACA_LLAMA3_70B,
    ALPACA_MEAN,
    ARENA_GPT4,
    ARENA_GPT35,
    ARENA_MEAN,
    ARENA_O3_MINI,
    CODE_ALPACA,
    GPTEACHER,
    SHIPPED_TRAINING,
    Source,
    split_files,
)
from benchmarks.report import update_section
from predictor_actor.evaluate import evaluate
from predictor_actor.records import load_labelled
from predictor_actor.train import TrainConfig, train

# (dataset, the sets tested): every set of a data set is tested whole
HELD_OUT = {
    "gpteacher": (GPTEACHER,),
    "arena_hard": (ARENA_GPT4, ARENA_GPT35, ARENA_O3_MINI),
    "alpaca_eval": (ALPACA_GPT4, ALPACA_GPT4_TURBO, ALPACA_LLAMA3_8B, ALPACA_LLAMA3_70B),
    "code_alpaca": (CODE_ALPACA,),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    training: tuple[Source, ...]
    config: TrainConfig


# Trained on CC BY-NC data (AlpacaEval): never the default, never in the repository; built on
# request by `optin` below, its licence in its name and card.
OPT_IN = Recipe(
    "opt-in (CC BY-NC): arena-hard + AlpacaEval means of models",
    (ARENA_MEAN, ALPACA_MEAN),
    TrainConfig(),
)
OPT_IN_DIR = RUNS.parent / "models" / "ranker-arena-alpacaeval-cc-by-nc-4.0"

RECIPES = (
    Recipe("shipped: 2 layers + cues, arena-hard mean of models", SHIPPED_TRAINING, TrainConfig()),
    OPT_IN,
    Recipe(
        "previous: 1 layer, arena-hard gpt-4-0314",
        (GPTEACHER, ARENA_GPT4),
        TrainConfig(layers=1, cues=False),
    ),
)


def transfer() -> None:
    t0 = time.monotonic()
    rows: dict[str, dict[str, float]] = {}
    means: dict[str, dict[str, float]] = {}
    for recipe in RECIPES:
        by_dataset: dict[str, list[float]] = {}
        for dataset, tests in HELD_OUT.items():
            sources = tuple(s for s in recipe.training if s.dataset != dataset)
            data = load_labelled(split_files(sources, "train"))
            tag = "-".join(s.stem for s in sources)
            model = train(
                data,
                RUNS / f"transfer-{recipe.config.layers}-{recipe.config.cues}-{tag}",
                recipe.config,
                cache_dir=CACHE,
                progress=False,
            )
            seen = set(data.prompts)
            for test in tests:
                held = _unseen(_load(test), seen)
                tau = evaluate(model, held, cache_dir=CACHE)["kendall_tau"]
                name = f"{test.stem} (n={len(held)})"
                rows.setdefault(name, {})[recipe.name] = tau
                rows[name].setdefault("trained on", " + ".join(s.stem for s in sources))
                by_dataset.setdefault(dataset, []).append(tau)
                print(f"{recipe.name}: {name}: {tau:.3f}", flush=True)
        means[recipe.name] = {d: float(np.mean(v)) for d, v in by_dataset.items()}
    names = [r.name for r in RECIPES]
    lines = [
        "Leave-one-dataset-out: for each data set, the recipe trained on its training data "
        "(training splits) without any set of that data set, then tested on all of that set "
        "(Kendall tau-b over the whole file; prompts seen in training dropped). The mean weighs "
        "each data set once (its sets averaged first). Target: mean >= 0.35.",
        "",
        "| held-out set | trained on (shipped recipe) | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['trained on']} | " + " | ".join(_fmt(r[n]) for n in names) + " |"
        )
    for dataset in HELD_OUT:
        lines.append(
            f"| mean over {dataset} | | "
            + " | ".join(_fmt(means[n][dataset]) for n in names)
            + " |"
        )
    lines.append(
        "| **mean over the data sets** | | "
        + " | ".join(f"**{_fmt(float(np.mean(list(means[n].values()))))}**" for n in names)
        + " |"
    )
    print("\n".join(lines))
    update_section("predictor-transfer", "\n".join(lines))
    print(f"transfer benchmark: {time.monotonic() - t0:.0f} s")


_OPT_IN_NOTES = """## Licence: CC BY-NC 4.0 (non-commercial)

- Trained on AlpacaEval's 805 instructions with the answers of its 225 models (tatsu-lab/
  alpaca_eval, data CC BY-NC 4.0; outputs also under each model provider's terms) and on
  arena-hard's prompts with the answers of 20 models (lm-sys/arena-hard-auto, Apache-2.0).
  Each prompt's label is the mean over models of its log answer length, each model's own mean
  removed first. GPTeacher is left out: it lowers transfer to real user prompts (docs/predictor.md).
- Because of AlpacaEval's licence this model may not be used commercially. It is not shipped in
  the repository; rebuild it from ../shared with
  `python -m benchmarks.bench_predictor optin`, and serve it with
  `predictor: {model_dir: <this directory>}`.
- Leave-one-dataset-out figures of this recipe: docs/benchmarks.md, `predictor-transfer`."""


def optin() -> None:
    """Build the opt-in non-commercial ranker into OPT_IN_DIR, with its card."""
    from benchmarks.bench_predictor import EVAL_SETS
    from predictor_actor.model_card import write_model_card

    files = split_files(OPT_IN.training, "train")
    data = load_labelled(files)
    model = train(
        data, OPT_IN_DIR, OPT_IN.config, cache_dir=CACHE, data_names=[f.name for f in files]
    )
    seen = set(data.prompts)
    results = {}
    for name, where in EVAL_SETS.items():
        held = _unseen(_load(*where), seen)
        results[name] = evaluate(model, held, cache_dir=CACHE)
    write_model_card(OPT_IN_DIR, model, results, notes=_OPT_IN_NOTES)
    print(f"wrote {OPT_IN_DIR} (CC BY-NC 4.0: non-commercial use only)")
