"""`agegate version`: what is installed, for bug reports and deployment checks."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json

from stream import __version__

_DEPENDENCIES = ("confluent-kafka", "faust-streaming", "torch", "redis", "fastavro", "numpy", "Pillow")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def versions() -> dict[str, str]:
    found = {"agegate": __version__}
    for dist in _DEPENDENCIES:
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def run(args: argparse.Namespace) -> int:
    found = versions()
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for name, version in found.items():
            print(f"{name:16} {version}")
    return 0
