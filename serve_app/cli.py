"""The `rankserve` command. Each subcommand lives with the code it drives and is imported only
when used, so that `rankserve simulate` never loads Ray, vLLM or torch.

This is also where the parts meet: the simulator takes the predictor as an injected scorer,
given here."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any


def _model_scorer(model_dir: str | None) -> Any:
    """`rankserve simulate --predictor DIR`: DIR's scores and lengths (None: shipped ones)."""
    from predictor_actor.scoring import ModelScorer

    return ModelScorer(model_dir, model_dir)


def _plain(module: str) -> Callable[[Any, str, str], None]:
    return lambda sub, name, help_text: importlib.import_module(module).register(
        sub, name, help_text
    )


def _simulate(sub: Any, name: str, help_text: str) -> None:
    from cluster.sim.cli import register

    register(sub, name, help_text, model_scorer=_model_scorer)


# subcommand -> (one-line help, what registers its parser)
SUBCOMMANDS: dict[str, tuple[str, Callable[[Any, str, str], None]]] = {
    "simulate": ("compare scheduling policies on a workload in virtual time", _simulate),
    "data": ("turn data sets into prompt files", _plain("cluster.workload.cli")),
    "predictor": (
        "train and evaluate the output-length ranking model",
        _plain("predictor_actor.cli"),
    ),
    "serve": (
        "start the service: Ray cluster, vLLM replicas, scheduler",
        _plain("serve_app.serve_cli"),
    ),
    "bench": ("replay a workload against a live endpoint", _plain("serve_app.bench")),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankserve", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (help_text, register) in SUBCOMMANDS.items():
        if name == wanted:
            register(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
