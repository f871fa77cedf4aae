"""`agegate datasets build`: the standardized synthetic benchmark, fixed seed, hash recorded.

    python -m model.evaluation.datasets build --out DIR [--images 4000] [--seed 1000] [--bias skin_tone=dark:+5]

Every row is in the test split: a benchmark is evaluation data only. Its subject ids carry the seed,
so with a seed other than the training data's no benchmark subject was ever trained on. The manifest
hash is written to DIR/benchmark.json; `agegate eval --expect-hash` (or `--baseline`) refuses any
other data, so numbers from different datasets are never put side by side.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_SEED = 1000  # not 0, the seed the example training data uses
DEFAULT_IMAGES = 4000


def build_benchmark(
    out_dir: str | Path,
    *,
    images: int = DEFAULT_IMAGES,
    seed: int = DEFAULT_SEED,
    bias: Any = None,
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


# Held-out capture conditions: the benchmark's own images degraded the way real captures are. The
# training generator never produced these, so they measure robustness, not in-distribution accuracy.
CONDITIONS: dict[str, dict[str, float]] = {
    "jpeg_q15": {"jpeg_quality": 15},
    "blur_r1.5": {"blur_radius": 1.5},
    "dim_0.45": {"brightness": 0.45},
    "bright_1.6": {"brightness": 1.6},
    "lowres_20px": {"resolution": 20},
}
DEFAULT_JPEG_QUALITY = 92
QUALITY_FIELDS = ("q_luminance", "q_sharpness", "q_side_px", "q_jpeg_quality")


def degrade(
    data: bytes,
    *,
    jpeg_quality: float = DEFAULT_JPEG_QUALITY,
    blur_radius: float = 0.0,
    brightness: float = 1.0,
    resolution: float = 0,
) -> tuple[bytes, dict[str, str]]:
    """Apply one capture condition to an encoded image; returns the JPEG and its measured quality fields
    (mean luminance, sharpness as the variance of a Laplacian-like difference, side in pixels)."""
    import io

    import numpy as np
    from PIL import Image, ImageEnhance, ImageFilter

    img = Image.open(io.BytesIO(data)).convert("RGB")
    size = img.size
    if resolution:
        img = img.resize((int(resolution), int(resolution)), Image.Resampling.BILINEAR).resize(
            size, Image.Resampling.BILINEAR
        )
    if blur_radius:
        img = img.filter(ImageFilter.GaussianBlur(blur_radius))
    if brightness != 1.0:
        img = ImageEnhance.Brightness(img).enhance(brightness)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(jpeg_quality))
    out = buf.getvalue()
    grey = np.asarray(Image.open(io.BytesIO(out)).convert("L"), dtype=np.float64)
    lap = grey[1:-1, 1:-1] * 4 - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    fields = {
        "q_luminance": f"{grey.mean():.1f}",
        "q_sharpness": f"{lap.var():.1f}",
        "q_side_px": str(int(resolution) if resolution else size[0]),
        "q_jpeg_quality": str(int(jpeg_quality)),
    }
    return out, fields


def quality_stratum(value: float, edges: tuple[float, float]) -> str:
    return "low" if value < edges[0] else "high" if value >= edges[1] else "mid"


def build_conditions(out_dir: str | Path, conditions: Mapping[str, Mapping[str, float]] = CONDITIONS) -> dict[str, Any]:
    """Next to a built benchmark, one folder and manifest per held-out condition (plus `clean`), and
    `conditions.csv`, every condition in one manifest with a `condition` column and quality strata
    (`sharpness`, `luminance`: low/mid/high by the clean set's terciles), so one `agegate eval` reports
    every metric by condition and by quality stratum (fairness/by_group tables)."""
    import numpy as np

    from model.data.manifest import content_hash, load_manifest, write_manifest

    out = Path(out_dir)
    base = load_manifest(out / "manifest.csv")
    sets = {"clean": {}, **{k: dict(v) for k, v in conditions.items()}}
    per_set: dict[str, list[tuple[Any, dict[str, str]]]] = {}
    for name, params in sets.items():
        made = []
        for row in base.rows:
            data, fields = degrade(base.resolve(row).read_bytes(), **params)
            path = Path("conditions") / name / row.path
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            (out / path).write_bytes(data)
            made.append((row, {**fields, "path": str(path)}))
        per_set[name] = made
    clean = per_set["clean"]
    sharp_edges: tuple[float, float] = tuple(np.quantile([float(f["q_sharpness"]) for _, f in clean], [1 / 3, 2 / 3]))
    lum_edges: tuple[float, float] = tuple(np.quantile([float(f["q_luminance"]) for _, f in clean], [1 / 3, 2 / 3]))
    combined = []
    record: dict[str, Any] = {"conditions": {}}
    quality_rows = []
    for name, made in per_set.items():
        rows = []
        for row, f in made:
            attrs = {
                **row.attributes,
                "condition": name,
                "sharpness": quality_stratum(float(f["q_sharpness"]), sharp_edges),
                "luminance": quality_stratum(float(f["q_luminance"]), lum_edges),
            }
            rows.append(dataclasses.replace(row, path=f["path"], attributes=attrs))
            quality_rows.append([f["path"], *(f[k] for k in QUALITY_FIELDS)])
        combined.extend(rows)
        m_path = write_manifest(
            out / "conditions" / name / "manifest.csv",
            [dataclasses.replace(r, path=str(Path(r.path).relative_to(Path("conditions") / name))) for r in rows],
        )
        record["conditions"][name] = {
            "params": sets[name],
            "manifest": str(m_path.relative_to(out)),
            "content_hash": content_hash(load_manifest(m_path)),
        }
    c_path = write_manifest(out / "conditions.csv", combined)
    # The measured values themselves (continuous, so not manifest attributes, which are groups).
    with (out / "quality.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *QUALITY_FIELDS])
        w.writerows(quality_rows)
    record["combined"] = {"manifest": c_path.name, "content_hash": content_hash(load_manifest(c_path))}
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="datasets_command", required=True, help="build: write the benchmark")
    add_build_parser(sub)


def add_build_parser(sub: Any) -> None:
    """`build`'s parser, also mounted by `agegate datasets` beside `from-feedback` (stream/tools/datasets_cmd.py)."""
    b = sub.add_parser("build", help="write the synthetic benchmark and record its manifest hash")
    b.add_argument("--out", required=True, type=Path, help="output folder (images and manifest)")
    b.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="number of images")
    b.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed (the recorded hash depends on it)")
    b.add_argument("--bias", default=None, help="inject a cue shift for one group, e.g. skin_tone=dark:+5")
    b.add_argument("--workers", type=int, default=1, help="worker processes")
    b.add_argument(
        "--conditions",
        action="store_true",
        help="also write held-out capture conditions (JPEG quality, blur, lighting, resolution) under "
        "OUT/conditions/, each with its manifest, plus OUT/conditions.csv with a `condition` column "
        "and sharpness/luminance strata, and OUT/quality.csv with the measured values",
    )


def run(args: argparse.Namespace) -> int:
    from model.data.synthetic import Bias

    bias = Bias.parse(args.bias) if args.bias else None
    record = build_benchmark(args.out, images=args.images, seed=args.seed, bias=bias, workers=args.workers)
    if args.conditions:
        record["held_out_conditions"] = build_conditions(args.out)
        (Path(args.out) / "benchmark.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agegate datasets")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
