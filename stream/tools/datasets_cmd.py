"""`agegate datasets build|from-feedback`: the benchmark (model/evaluation/datasets.py, which must not
import stream) and a training set from verified feedback (stream/tools/feedback_dataset.py, which
reads Kafka)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model.evaluation.datasets import add_build_parser
    from stream.tools import feedback_dataset

    sub = parser.add_subparsers(
        dest="datasets_command",
        required=True,
        help="build: the synthetic benchmark; from-feedback: training data from verified ages",
    )
    add_build_parser(sub)
    fb = sub.add_parser("from-feedback", help="join consented retained frames with verified ages into a manifest")
    feedback_dataset.add_arguments(fb)


def run(args: argparse.Namespace) -> int:
    if args.datasets_command == "from-feedback":
        from stream.tools import feedback_dataset

        return feedback_dataset.run(args)
    from model.evaluation import datasets

    return datasets.run(args)
