"""`agegate infra up|down|status`: wraps deploy/local/infra.sh, the one implementation."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path


def infra_script() -> Path:
    """deploy/local/infra.sh of this checkout (agegate is installed editable from its repository)."""
    candidates = [
        Path(os.environ["AGEGATE_HOME"]) if "AGEGATE_HOME" in os.environ else None,
        Path(__file__).resolve().parents[2],
        Path.cwd(),
    ]
    for root in filter(None, candidates):
        script = root / "deploy" / "local" / "infra.sh"
        if script.is_file():
            return script
    raise FileNotFoundError("deploy/local/infra.sh not found: run from an agegate checkout or set AGEGATE_HOME to one")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("up", "down", "status"), help="start, stop, or show what runs")
    parser.add_argument("service", nargs="?", choices=("kafka", "redis", "redis-cluster"), help="only this service")


def run(args: argparse.Namespace) -> int:
    cmd = ["bash", str(infra_script()), args.action] + ([args.service] if args.service else [])
    return subprocess.call(cmd)
