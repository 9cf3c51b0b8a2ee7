"""The `rankserve` command. Each subcommand lives with the code it drives and is imported only
when used, so that `rankserve simulate` never loads Ray, vLLM or torch."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module with `register(subparsers)`, one-line help)
SUBCOMMANDS = {
    "simulate": ("cluster.sim.cli", "compare scheduling policies on a workload in virtual time"),
    "data": ("cluster.workload.cli", "turn data sets into prompt files"),
    "predictor": ("predictor_actor.cli", "train and evaluate the output-length ranking model"),
    "serve": ("serve_app.serve_cli", "start the service: Ray cluster, vLLM replicas, scheduler"),
    "bench": ("serve_app.bench", "replay a workload against a live endpoint"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankserve", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        if name == wanted:
            importlib.import_module(module).register(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
