"""A synthetic face generator with ground-truth ages.

Age shows through several cues, each blurred by noise so a good model still makes errors:
- proportions: children have rounder faces, lower eye lines and larger eyes (fades out by ~20);
- facial hair (sex M) growing through the teens, the cue nearest the 13-18 thresholds;
- wrinkles from ~28, more and darker with age, lower contrast on darker skin;
- greying hair from ~40.
Each subject has a persistent "looks older/younger" offset (irreducible error) and several images
at nearby ages; pose, scale, lighting, background, sensor noise and JPEG quality vary per image.
An optional bias shifts one group's cues by some years, so fairness metrics have something to catch.
Everything is deterministic from the seed: subject i draws from its own generator (seed, i), so the
output does not depend on how the work is split across processes.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.data.manifest import ManifestRow, content_hash, load_manifest, split_for_subject, write_manifest

SEXES = ("F", "M")
SKIN_TONES = ("light", "medium", "dark")
_SKIN_RGB = {"light": (236, 200, 170), "medium": (198, 150, 110), "dark": (120, 80, 55)}
_HAIR_RGB = ((40, 30, 25), (90, 60, 30), (150, 110, 60), (20, 20, 20))
# Contrast of wrinkle lines per skin tone: the same lines are harder to see on darker skin.
_WRINKLE_CONTRAST = {"light": 1.0, "medium": 0.8, "dark": 0.55}


@dataclass(frozen=True, slots=True)
class Bias:
    """Render faces of `attribute == value` as if `years` older (negative: younger)."""

    attribute: str
    value: str
    years: float

    @classmethod
    def parse(cls, text: str) -> Bias:
        """Parse 'skin_tone=dark:+5'."""
        try:
            cond, years = text.rsplit(":", 1)
            attribute, value = cond.split("=", 1)
            return cls(attribute.strip(), value.strip(), float(years))
        except ValueError:
            raise ValueError(f"bias {text!r} must look like 'skin_tone=dark:+5'") from None


# Apparent age = true age + a persistent per-person offset + per-image noise (years). The offset is the
# error no number of photos averages away; the stream's load generator draws people the same way.
SUBJECT_OFFSET_SD = 2.0
IMAGE_NOISE_SD = 1.0


def render_face(age: float, attrs: dict[str, str], rng: np.random.Generator, *, size: int = 64) -> Image.Image:
    """Draw one face whose cues follow `age` (apparent age: callers add subject offsets and bias)."""
    s = float(size)
    a = max(0.5, age)
    child = float(np.clip((20.0 - a) / 14.0, 0.0, 1.0))
    teen_hair = float(np.clip((a - 13.0) / 7.0, 0.0, 1.0))
    grey = 1.0 / (1.0 + math.exp(-(a - 50.0) / 7.0))
    wrinkles = max(0.0, (a - 28.0) / 6.0)

    bg = tuple(int(v) for v in rng.integers(40, 220, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)

    skin = np.array(_SKIN_RGB[attrs.get("skin_tone", "medium")], float) + rng.normal(0, 8, 3)
    skin_t = tuple(int(v) for v in np.clip(skin, 0, 255))
    hair = np.array(_HAIR_RGB[int(rng.integers(len(_HAIR_RGB)))], float)
    hair = hair * (1 - grey) + np.array([200.0, 200.0, 200.0]) * grey
    hair_t = tuple(int(v) for v in np.clip(hair + rng.normal(0, 6, 3), 0, 255))

    cx = s / 2 + rng.normal(0, s * 0.03)
    cy = s / 2 + rng.normal(0, s * 0.03)
    scale = s * rng.uniform(0.80, 0.95)
    fw = scale * (0.56 + 0.08 * child)  # rounder when young
    fh = scale * (0.80 - 0.06 * child)
    male = attrs.get("sex") == "M"

    # Hair behind the head; long for F.
    if not male:
        d.ellipse([cx - fw * 0.62, cy - fh * 0.58, cx + fw * 0.62, cy + fh * 0.75], fill=hair_t)
    d.ellipse([cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2], fill=skin_t)
    # Hair cap.
    d.chord([cx - fw * 0.52, cy - fh * 0.56, cx + fw * 0.52, cy + fh * 0.1], 180, 360, fill=hair_t)

    eye_y = cy + fh * (0.02 + 0.10 * child) + rng.normal(0, s * 0.01)
    eye_dx = fw * 0.22
    eye_r = scale * (0.045 + 0.03 * child) * rng.uniform(0.9, 1.1)
    for sx in (-1, 1):
        ex = cx + sx * eye_dx
        d.ellipse([ex - eye_r * 1.3, eye_y - eye_r, ex + eye_r * 1.3, eye_y + eye_r], fill=(245, 245, 245))
        d.ellipse([ex - eye_r * 0.6, eye_y - eye_r * 0.6, ex + eye_r * 0.6, eye_y + eye_r * 0.6], fill=(30, 30, 40))
    mouth_y = eye_y + fh * (0.28 - 0.04 * child)
    d.line([cx - fw * 0.15, mouth_y, cx + fw * 0.15, mouth_y], fill=(150, 60, 60), width=max(1, size // 40))

    if male and teen_hair > 0:
        beard = np.array(skin_t, float) * (1 - 0.45 * teen_hair) + hair * 0.45 * teen_hair
        beard_t = tuple(int(v) for v in np.clip(beard, 0, 255))
        d.chord([cx - fw * 0.45, mouth_y - fh * 0.12, cx + fw * 0.45, cy + fh * 0.5], 0, 180, fill=beard_t)
        d.line([cx - fw * 0.15, mouth_y, cx + fw * 0.15, mouth_y], fill=(150, 60, 60), width=max(1, size // 40))

    n_lines = int(wrinkles + rng.uniform(0, 1))
    if n_lines:
        contrast = _WRINKLE_CONTRAST[attrs.get("skin_tone", "medium")] * min(1.0, 0.35 + wrinkles / 8)
        line_t = tuple(int(v) for v in np.clip(np.array(skin_t) * (1 - 0.45 * contrast), 0, 255))
        top = cy - fh * 0.30
        for i in range(min(n_lines, 6)):
            y = top + i * fh * 0.045 + rng.normal(0, 0.5)
            d.line([cx - fw * 0.25, y, cx + fw * 0.25, y + rng.normal(0, 0.8)], fill=line_t, width=1)
        for sx in (-1, 1):  # crow's feet
            ex = cx + sx * (eye_dx + eye_r * 1.6)
            for k in range(min(n_lines // 2, 3)):
                d.line([ex, eye_y, ex + sx * eye_r, eye_y + (k - 1) * eye_r * 0.7], fill=line_t, width=1)

    arr = np.asarray(img, dtype=np.float64)
    arr = arr * rng.uniform(0.7, 1.25) + rng.normal(0, rng.uniform(2, 9), arr.shape)  # light, noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode_jpeg(image: Image.Image, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=int(rng.integers(70, 96)))
    return buf.getvalue()


def sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    return {"sex": SEXES[int(rng.integers(2))], "skin_tone": SKIN_TONES[int(rng.integers(3))]}


def sample_base_age(rng: np.random.Generator) -> float:
    """Dense around the 13/16/18 thresholds, where decisions are hardest, with a long adult tail."""
    if rng.random() < 0.5:
        return float(rng.uniform(6, 26))
    return float(rng.uniform(6, 75))


def subject_rows(
    index: int, seed: int, images_per_subject: int, size: int, bias: Bias | None
) -> list[tuple[ManifestRow, bytes]]:
    rng = np.random.default_rng([seed, index])
    subject_id = f"s{seed}-{index:06d}"
    attrs = sample_attributes(rng)
    base = sample_base_age(rng)
    offset = rng.normal(0, SUBJECT_OFFSET_SD)  # this person looks older/younger than they are
    shift = bias.years if bias and attrs.get(bias.attribute) == bias.value else 0.0
    split = split_for_subject(subject_id)
    # Labels first, rendering from its own stream per image: labels then do not depend on the bias
    # or on how many random draws a rendering happened to use.
    ages = [round(base + rng.uniform(0, 3), 2) for _ in range(images_per_subject)]
    noise = rng.normal(0, IMAGE_NOISE_SD, images_per_subject)
    out = []
    for k, age in enumerate(ages):
        apparent = age + offset + shift + noise[k]
        draw = np.random.default_rng([seed, index, k + 1])
        data = encode_jpeg(render_face(apparent, attrs, draw, size=size), draw)
        path = f"images/{index // 1000:03d}/{subject_id}-{k}.jpg"
        out.append((ManifestRow(path, age, subject_id, split, dict(attrs)), data))
    return out


def _write_chunk(args: tuple[Path, Sequence[int], int, int, int, Bias | None]) -> list[ManifestRow]:
    out_dir, indices, seed, per_subject, size, bias = args
    rows = []
    for i in indices:
        for row, data in subject_rows(i, seed, per_subject, size, bias):
            target = out_dir / row.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            rows.append(row)
    return rows


def generate_dataset(
    out_dir: str | Path,
    *,
    images: int,
    seed: int = 0,
    images_per_subject: int = 4,
    size: int = 64,
    bias: Bias | None = None,
    workers: int = 1,
    manifest_name: str = "manifest.csv",
) -> Path:
    """Write images plus a manifest; returns the manifest path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_subjects = max(1, math.ceil(images / images_per_subject))
    chunks = [range(i, min(i + 250, n_subjects)) for i in range(0, n_subjects, 250)]
    jobs = [(out_dir, list(c), seed, images_per_subject, size, bias) for c in chunks]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_write_chunk, jobs))
    else:
        results = [_write_chunk(j) for j in jobs]
    rows = [r for chunk in results for r in chunk][:images]
    return write_manifest(out_dir / manifest_name, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (images/ and the manifest)")
    parser.add_argument("--images", type=int, default=20_000, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same images)")
    parser.add_argument("--per-subject", type=int, default=4, help="images per subject")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--bias", type=Bias.parse, default=None, help="inject a cue shift, e.g. skin_tone=dark:+5")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    path = generate_dataset(
        args.out,
        images=args.images,
        seed=args.seed,
        images_per_subject=args.per_subject,
        size=args.size,
        bias=args.bias,
        workers=args.workers,
    )
    manifest = load_manifest(path)
    counts = {s: len(manifest.split(s)) for s in ("train", "val", "test")}
    print(
        f"wrote {len(manifest.rows)} images to {path} in {time.perf_counter() - start:.1f}s; splits {counts}; "
        f"content hash {content_hash(manifest)}"
    )
    return 0
