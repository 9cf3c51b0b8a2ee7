"""`rankserve data`: convert the shared data sets into prompt files, and look at prompt files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cluster.workload.datasets import (
    DATASETS,
    DatasetError,
    check_output_path,
    convert,
    default_shared_dir,
    parse_split,
    split_by_prompt,
)
from cluster.workload.prompts import PromptFileError, read_prompt_file, write_prompt_file


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    conv = sub.add_parser(
        "convert",
        help="turn a data set of ../shared/datasets into a prompt file (or split files)",
        description="Convert a prompt/answer data set into prompt files (JSONL). Token counts "
        "use the project tokenizer (docs/workloads.md). Output must lie outside the repository "
        "or in a git-ignored folder such as runs/: some data sets are non-commercial.",
    )
    conv.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    conv.add_argument("--model", help="whose answers (arena_hard, alpaca_eval); omit to list")
    conv.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output file (.jsonl, .jsonl.gz, .jsonl.xz), or a directory",
    )
    conv.add_argument(
        "--split",
        help="split by prompt, e.g. train:0.8,val:0.1,test:0.1: one file per split, named "
        "<stem>_<split>.jsonl",
    )
    conv.add_argument("--seed", type=int, default=0, help="seed of --split and --limit (0)")
    conv.add_argument("--limit", type=int, help="keep the answers of N prompts drawn at random")
    conv.add_argument(
        "--keep-output", action="store_true", help="keep the answer text in an `output` field"
    )
    conv.add_argument(
        "--shared-dir",
        type=Path,
        default=default_shared_dir(),
        help="folder of the shared data sets (default: ../shared/datasets from the repo root)",
    )
    conv.add_argument("--quiet", action="store_true", help="no progress bars")
    conv.set_defaults(func=run_convert)

    insp = sub.add_parser("inspect", help="count and token statistics of a prompt file")
    insp.add_argument("file", type=Path)
    insp.add_argument("--json", action="store_true", help="print one JSON object instead")
    insp.add_argument("--bins", type=int, default=12, help="histogram bins (log scale)")
    insp.set_defaults(func=run_inspect)


def _output_paths(args: argparse.Namespace, splits: list[str] | None) -> dict[str | None, Path]:
    out: Path = args.out
    if out.is_dir() or out.suffix == "" or str(out).endswith("/"):
        stem = args.dataset + (f"_{args.model.replace('/', '_')}" if args.model else "")
        out, suffix = out / stem, ".jsonl"
    else:
        name = out.name
        suffix = next(s for s in (".jsonl.gz", ".jsonl.xz", ".jsonl", "") if name.endswith(s))
        out = out.with_name(name[: len(name) - len(suffix)] if suffix else name)
        suffix = suffix or ".jsonl"
    if splits is None:
        return {None: out.with_name(out.name + suffix)}
    return {s: out.with_name(f"{out.name}_{s}{suffix}") for s in splits}


def run_convert(args: argparse.Namespace) -> int:
    try:
        fractions = parse_split(args.split) if args.split else None
        paths = _output_paths(args, list(fractions) if fractions else None)
        for p in paths.values():
            check_output_path(p)
        records = convert(
            args.dataset,
            args.shared_dir,
            model=args.model,
            keep_output=args.keep_output,
            limit=args.limit,
            seed=args.seed,
            progress=not args.quiet,
        )
    except DatasetError as e:
        print(f"rankserve data convert: {e}", file=sys.stderr)
        return 2
    parts = split_by_prompt(records, fractions, args.seed) if fractions else {None: records}
    for key, recs in parts.items():
        write_prompt_file(paths[key], recs)
        n_prompts = len({r.prompt for r in recs})
        print(f"{paths[key]}: {len(recs)} records, {n_prompts} prompts")
    print(f"licence of {args.dataset}: {DATASETS[args.dataset].licence}; do not commit these files")
    return 0


def _stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "min": int(values.min()),
        "mean": round(float(values.mean()), 1),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": int(values.max()),
    }


def _histogram(values: np.ndarray, bins: int, width: int = 50) -> list[str]:
    lo, hi = max(1, int(values.min())), max(2, int(values.max()) + 1)
    edges = np.unique(np.geomspace(lo, hi, bins + 1).round().astype(int))
    counts, _ = np.histogram(values, bins=edges)
    top = counts.max() or 1
    return [
        f"  {a:>7}-{b - 1:<7} {c:>7} {'#' * round(width * c / top)}"
        for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)
    ]


def run_inspect(args: argparse.Namespace) -> int:
    try:
        records = read_prompt_file(args.file)
    except PromptFileError as e:
        print(f"rankserve data inspect: {e}", file=sys.stderr)
        return 2
    prompt = np.array([r.prompt_tokens for r in records])
    output = np.array([r.output_tokens for r in records])
    sources: dict[str, int] = {}
    for r in records:
        sources[r.source or "-"] = sources.get(r.source or "-", 0) + 1
    summary = {
        "file": str(args.file),
        "records": len(records),
        "distinct_prompts": len({r.prompt for r in records}),
        "prompt_tokens": _stats(prompt),
        "output_tokens": _stats(output),
        "with_score": sum(r.score is not None for r in records),
        "with_predicted_tokens": sum(r.predicted_tokens is not None for r in records),
        "with_output_text": sum(r.output is not None for r in records),
        "sources": dict(sorted(sources.items(), key=lambda kv: -kv[1])),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.file}: {len(records)} records, {summary['distinct_prompts']} distinct prompts")
    for key in ("prompt_tokens", "output_tokens"):
        s = summary[key]
        print(f"{key:>14}: " + "  ".join(f"{k} {v:g}" for k, v in s.items()))
    for key in ("with_score", "with_predicted_tokens", "with_output_text"):
        if summary[key]:
            print(f"{key:>22}: {summary[key]}")
    print("sources: " + ", ".join(f"{k} {v}" for k, v in summary["sources"].items()))
    if len(records):
        print("output tokens (log-scale bins):")
        print("\n".join(_histogram(output, args.bins)))
    return 0
