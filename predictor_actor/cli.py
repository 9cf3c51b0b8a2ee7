"""`rankserve predictor train|eval|status|rollback`: train the ranking model on prompt files or
request logs, measure how well a model orders a labelled file, and watch or undo what the live
predictor learned from served traffic."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = p.add_subparsers(dest="predictor_command", required=True, metavar="ACTION")

    t = sub.add_parser(
        "train",
        help="train a model on prompt files / request logs (JSONL)",
        description="Train the output-length ranking model. Each --data file is JSONL with "
        "`prompt` and `output_tokens` (or answer text `output`): a prompt file or a "
        "rankserve request log (docs/predictor.md).",
    )
    t.add_argument("--data", nargs="+", required=True, metavar="FILE", help="labelled JSONL files")
    t.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    t.add_argument(
        "--loss",
        choices=("listmle", "regression", "classification"),
        default="listmle",
        help="listmle ranking (default) or a baseline",
    )
    t.add_argument(
        "--list-size", type=int, default=32, help="prompts per ListMLE list (default 32)"
    )
    t.add_argument(
        "--epochs", type=int, default=None, help="epochs over the training set (default 40)"
    )
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3)")
    t.add_argument(
        "--max-length", type=int, default=256, help="encoder truncation in tokens (default 256)"
    )
    t.add_argument(
        "--layers",
        type=int,
        default=2,  # TrainConfig.layers (not imported here: it pulls in torch)
        help="encoder layers to pool after, 1..6 (default 2; docs/predictor.md says what depth "
        "costs and buys)",
    )
    t.add_argument(
        "--no-cues",
        action="store_true",
        help="leave out the textual length cues (predictor_actor/prompt_cues.py)",
    )
    t.add_argument(
        "--int8",
        action="store_true",
        help="train on (and serve) the int8 encoder: faster, batch-dependent scores",
    )
    t.add_argument(
        "--val",
        nargs="+",
        default=None,
        metavar="FILE",
        help="labelled files to pick the best epoch on (default: hold out --val-fraction "
        "of the --data prompts, by prompt)",
    )
    t.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of prompts held out (by prompt) to pick the best epoch",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    t.add_argument(
        "--cache-dir",
        default=None,
        help="embedding cache (default $RANKSERVE_CACHE_DIR or ~/.cache/rankserve)",
    )
    t.set_defaults(func=_train)

    e = sub.add_parser(
        "eval",
        help="rank metrics of a model on a labelled JSONL file",
        description="Print one JSON object: kendall_tau (tau-b over the file), "
        "mean_list_tau (mean tau-b over random lists of --list-size), spearman, n, "
        "and the prompt-length heuristic's tau for comparison.",
    )
    e.add_argument(
        "--model", default=None, metavar="DIR", help="model directory (default: shipped model)"
    )
    e.add_argument("--data", required=True, metavar="FILE", help="labelled JSONL file")
    e.add_argument("--list-size", type=int, default=32)
    e.add_argument("--cache-dir", default=None, help="embedding cache directory")
    e.set_defaults(func=_eval)

    for action, text in (
        ("status", "what the live predictor learned: versions, swaps, memory, log counts"),
        ("rollback", "serve again the predictor version before the last swap"),
    ):
        a = sub.add_parser(action, help=text, description=text + " (docs/predictor.md).")
        a.add_argument(
            "--served", default=None, metavar="NAME", help="served model (default: the default one)"
        )
        a.add_argument(
            "--state-dir",
            default=None,
            metavar="DIR",
            help="act on the learning state on disk (predictor stopped; it serves the result when "
            "it starts) instead of on the running predictor actor",
        )
        a.add_argument("--address", default="auto", help="Ray cluster (default: auto)")
        a.set_defaults(func=_live)


def _train(args: argparse.Namespace) -> int:
    from cluster.workload.prompts import PromptFileError
    from predictor_actor.model_card import write_model_card
    from predictor_actor.records import load_labelled
    from predictor_actor.train import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
        config = TrainConfig(
            loss=args.loss,
            list_size=args.list_size,
            max_length=args.max_length,
            layers=args.layers,
            quantize=args.int8,
            cues=not args.no_cues,
            val_fraction=args.val_fraction,
            seed=args.seed,
            **overrides,
        )
        data = load_labelled(args.data)
        val = load_labelled(args.val) if args.val else None
        model = train(
            data,
            args.out,
            config,
            cache_dir=args.cache_dir,
            resume=args.resume,
            data_names=[Path(p).name for p in args.data],
            val_data=val,
        )
    except (PromptFileError, ValueError, OSError) as e:
        print(f"rankserve predictor train: error: {e}", file=sys.stderr)
        return 2
    write_model_card(args.out, model)
    tr = model.config.training
    print(
        json.dumps(
            {
                "out": str(args.out),
                "loss": config.loss,
                "prompts": tr["prompts"],
                "val_kendall_tau": round(tr["val_kendall_tau"], 4),
                "val_mean_list_tau": round(tr["val_mean_list_tau"], 4),
                "best_epoch": tr["best_epoch"],
            }
        )
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from cluster.workload.prompts import PromptFileError
    from predictor_actor.evaluate import evaluate
    from predictor_actor.model import ModelLoadError, RankingModel
    from predictor_actor.records import load_labelled

    try:
        model = RankingModel.load(args.model)
        data = load_labelled([args.data])
        result = evaluate(
            model,
            data,
            cache_dir=args.cache_dir,
            list_size=args.list_size,
            progress=sys.stderr.isatty(),
        )
    except (ModelLoadError, PromptFileError, ValueError, OSError) as e:
        print(f"rankserve predictor eval: error: {e}", file=sys.stderr)
        return 2
    result["model"] = str(args.model) if args.model else "default"
    result["data"] = args.data
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


def _live(args: argparse.Namespace) -> int:
    if args.state_dir:
        return _on_disk(args)
    import ray

    from cluster.runtime.names import NAMESPACE, PREDICTOR_ACTOR

    ray.init(address=args.address, namespace=NAMESPACE, log_to_driver=False)
    try:
        actor = ray.get_actor(PREDICTOR_ACTOR, namespace=NAMESPACE)
    except ValueError:
        print(f"no {PREDICTOR_ACTOR} actor on this cluster: is rankserve running?", file=sys.stderr)
        return 1
    try:
        if args.predictor_command == "status":
            out = ray.get(actor.health.remote())
        else:
            out = ray.get(actor.rollback.remote(args.served))
    except ray.exceptions.RayTaskError as e:
        print(f"rankserve predictor {args.predictor_command}: {e.cause}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1))
    return 0


def _on_disk(args: argparse.Namespace) -> int:
    from predictor_actor.learning import served_dir
    from predictor_actor.model import ModelLoadError
    from predictor_actor.model_store import ModelStore

    root = served_dir(Path(args.state_dir), args.served or "") / "models"
    if not root.is_dir():
        print(f"rankserve predictor: no learning state in {root}", file=sys.stderr)
        return 2
    store = ModelStore(root, None)
    if args.predictor_command == "status":
        out = {"version": store.current, "versions": store.versions(), "events": store.events()}
    else:
        try:
            out = store.rollback()
        except ModelLoadError as e:
            print(f"rankserve predictor rollback: {e}", file=sys.stderr)
            return 2
    print(json.dumps(out, indent=1))
    return 0
