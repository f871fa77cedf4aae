"""`agegate datasets build`: the standardized synthetic benchmark, fixed seed, hash recorded.

    python -m model.evaluation.datasets build --out DIR [--images 4000] [--seed 1000] [--bias skin_tone=dark:+5]

Every row is in the test split: a benchmark is evaluation data only. Its subject ids carry the seed,
so with a seed other than the training data's no benchmark subject was ever trained on. The manifest
hash is written to DIR/benchmark.json; `agegate eval --expect-hash` (or `--baseline`) refuses any
other data, so numbers from different datasets are never put side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_SEED = 1000  # not 0, the seed the example training data uses
DEFAULT_IMAGES = 4000


def build_benchmark(
    out_dir: str | Path, *, images: int = DEFAULT_IMAGES, seed: int = DEFAULT_SEED, bias: Any = None,
    workers: int = 1,
) -> dict[str, Any]:
    from model.data.manifest import content_hash, load_manifest, write_manifest
    from model.data.synthetic import generate_dataset

    out = Path(out_dir)
    path = generate_dataset(out, images=images, seed=seed, bias=bias, workers=workers)
    manifest = load_manifest(path)
    write_manifest(path, [dataclasses.replace(r, split="test") for r in manifest.rows])
    manifest = load_manifest(path)
    record = {
        "name": "agegate-synthetic-benchmark",
        "manifest": path.name,
        "images": len(manifest.rows),
        "seed": seed,
        "bias": None if bias is None else {"attribute": bias.attribute, "value": bias.value, "years": bias.years},
        "content_hash": content_hash(manifest),
        "content_hash_with_files": content_hash(manifest, include_files=True),
    }
    (out / "benchmark.json").write_text(json.dumps(record, indent=1))
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="datasets_command", required=True)
    b = sub.add_parser("build", help="write the synthetic benchmark and record its manifest hash")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    b.add_argument("--seed", type=int, default=DEFAULT_SEED)
    b.add_argument("--bias", default=None, help="inject a cue shift for one group, e.g. skin_tone=dark:+5")
    b.add_argument("--workers", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    from model.data.synthetic import Bias

    bias = Bias.parse(args.bias) if args.bias else None
    record = build_benchmark(args.out, images=args.images, seed=args.seed, bias=bias, workers=args.workers)
    print(json.dumps(record, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agegate datasets")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
