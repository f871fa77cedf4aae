"""The `agegate` console script.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their subcommand runs, so `agegate version` does not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help). The module provides add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "version": ("stream.cmd_version", "print agegate's version and its main dependencies"),
    "infra": ("stream.infra", "start, stop or show the local Kafka, Redis and Redis Cluster (deploy/local)"),
    "topics": ("stream.topics", "create or describe the declared Kafka topics"),
    "demo": ("stream.demo", "produce and consume one event of each kind, printed decoded"),
    "train": ("model.train", "train an age model on a dataset manifest"),
    "synth": ("model.data.synthetic", "generate a synthetic face dataset with a manifest"),
    "datasets": ("model.evaluation.datasets", "build the standardized evaluation dataset"),
    "eval": ("stream.evaluate", "evaluate models side by side; optional release gate"),
    "worker": ("stream.runners.worker", "run the enforcement worker (faust)"),
    "produce": ("stream.produce", "produce a synthetic event stream (load generator)"),
    "replay": ("stream.runners.replay", "replay a historical window through the pipeline"),
    "dead-letters": ("stream.redrive", "list or redrive dead letters"),
    "config": ("stream.config", "show the resolved configuration or its reference table"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agegate", description="Streaming age-assurance enforcement.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if a in COMMANDS), None)
    parser = build_parser(only=chosen)
    args = parser.parse_args(args_list)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from stream.log import configure_logging

    configure_logging()
    result: int = args._run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
