"""A calibration set drawn like bench/belief_safety.py's population, for `agegate train --calibrate-only`.

    python bench/population_calibration.py --out DIR [--subjects 2000] [--seed 5000]

Why: the person-level error of a model that cannot tell 20 from 28 depends on who it is shown. Given
a predicted age of ~24, the true age can be anywhere from 18 to 35, and how far off the model is
depends on how many 30-year-olds the population holds; a floor (scalar, shape or table by
predicted age) fitted on the synthetic generator's own age mix (half 6-26, half 6-75) is therefore
not the floor of belief_safety's population (ages 12-25, a fifth 25-40). This writes a set with
belief_safety's age mix (80% uniform 12-25, 20% uniform 25-40), the generator's persistent
look-older/younger offset and per-photo noise, 8 images per subject within 40 days (belief_safety's
upload span), as images plus a manifest (subject ids `p<seed>-NNNNNN`, disjoint from any generator
set). Use a seed other than belief_safety's own (7). Measured use: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from model.data.manifest import ManifestRow, split_for_subject, write_manifest  # noqa: E402
from model.data.synthetic import (  # noqa: E402
    IMAGE_NOISE_SD,
    SUBJECT_OFFSET_SD,
    encode_jpeg,
    render_face,
    sample_attributes,
)

IMAGES_PER_SUBJECT = 8
SPAN_YEARS = 40 / 365.25  # belief_safety's 40 daily uploads


def subject_rows(out: Path, index: int, seed: int) -> list[ManifestRow]:
    """One subject's images, written under `out`; its own random stream, so any subset is reproducible."""
    rng = np.random.default_rng([seed, index])
    sid = f"p{seed}-{index:06d}"
    attrs = sample_attributes(rng)
    base = rng.uniform(12, 25) if rng.random() < 0.8 else rng.uniform(25, 40)
    look = rng.normal(0, SUBJECT_OFFSET_SD)
    rows = []
    for k in range(IMAGES_PER_SUBJECT):
        age = round(float(base + rng.uniform(0, SPAN_YEARS)), 3)
        image = render_face(age + look + rng.normal(0, IMAGE_NOISE_SD), attrs, rng, size=64)
        path = f"images/{index // 1000:03d}/{sid}-{k}.jpg"
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(encode_jpeg(image, rng))
        rows.append(ManifestRow(path, age, sid, split_for_subject(sid), dict(attrs)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (images/ and manifest.csv)")
    parser.add_argument("--subjects", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=5000)
    args = parser.parse_args(argv)
    rows = [row for i in range(args.subjects) for row in subject_rows(args.out, i, args.seed)]
    print(f"wrote {len(rows)} images of {args.subjects} subjects: {write_manifest(args.out / 'manifest.csv', rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
