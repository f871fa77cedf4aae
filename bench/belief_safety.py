"""Minors ALLOWed and adults burdened as uploads accumulate: the belief's honesty, measured.

    python bench/belief_safety.py [--checkpoint PATH] [--users 400] [--uploads 40] [--frames-per-upload 2]
                                  [--surface adult_content] [--policy FILE] [--young-ages 12 25] [--quick]
                                  [--decode-processes N]

A population that holds the hard cases: users aged 12-25 (every threshold's neighbourhood; for the 13
surfaces `--young-ages 9 17` puts half of them under 13) plus
adults 25-40, each with a persistent look-older/younger offset of the synthetic generator's spread
and per-photo noise, each uploading one 2-frame event a day to adult content (or --surface) under the
DEFAULT policy. Every upload is scored by the real model (InferenceEngine), fused by the real `fuse` and
decided by the real `decide`, with hysteresis as the worker keeps it.

Variants, side by side on the same frames:
- `independent-raw`: the fusion before issue 11 (each frame its own observation, the model's raw
  std, no floor);
- `independent-calibrated`: calibrated std, but frames still independent and no floor;
- `floor-scalar` (the worker before floor ratios): calibrated std, an event's frames as one
  observation, and the model's scalar error floor for every frame: std = sqrt(1/P + floor^2), Gaussian;
- `floor` (what the worker does): the same with the model's ErrorFloor: with a fitted floor ratio rho
  each frame's floor is sqrt(rho) * its std (stream/core/belief.py), the belief's floor the rms of its
  events'; a model without a ratio gives `floor-scalar` exactly;
- `floor+mixture`: the same belief, judged with the model's floor shape (a two-component scale
  mixture for the person-level error, stream/core/belief.py FloorShape): P(age >= T) and the
  intervals are the mixture's. Identical to `floor` for a model whose shape is Gaussian.
- `floor-by-age` (a): the same fused belief (fusion unchanged: the scalar floor splits each frame's
  variance), judged with the model's floor table (model/uncertainty.py `fit_floor_table`) evaluated
  at the belief's mean: std = sqrt(1/P + table(mean)^2), Gaussian;
- `floor-by-age-max` (b): judged with max(table(mean), scalar floor): the table may only widen;
- `floor-by-age-max+mixture`: (b) with the model's floor shape.
  All three equal `floor` (resp. `floor+mixture`) for a model without a floor table.

Reports at 1, 2, 5, 10, 20 and 40 uploads: users below the surface's threshold T ALLOWed (for adult
content, minors), users T..T+6 and T+7+ ALLOWed, the share of users whose true age lies inside the
belief's 50/80/90/95% intervals, and the reliability of the decision's own P(age >= T): per bin of
the stated probability, the share really T or older (what "P = 0.97" has to mean for ALLOW to be
safe). `--surface` judges another surface of the DEFAULT policy (messaging_unknown_adults: T = 16). Writes
bench/results/belief_safety.json. States the machine; nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from model.data.synthetic import (  # noqa: E402
    IMAGE_NOISE_SD,
    SUBJECT_OFFSET_SD,
    encode_jpeg,
    render_face,
    sample_attributes,
)
from model.engine import EncodedFrame, FrameEstimate, InferenceEngine  # noqa: E402
from model.uncertainty import NO_FLOOR_TABLE, FloorTable  # noqa: E402
from stream.core.belief import (  # noqa: E402
    GAUSSIAN_FLOOR,
    YEAR_S,
    Belief,
    ErrorFloor,
    Evidence,
    FloorByAge,
    FloorShape,
    event_evidence,
    fuse,
    judged_belief,
)
from stream.core.belief_coverage import belief_cdf_at, cdf_shares, probability_reliability  # noqa: E402
from stream.core.policy import Action, PolicyEvent, decide, load_policy  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "belief_safety.json"
DAY = 86400.0
START = 1.79e9
REPORT_AT = (1, 2, 5, 10, 20, 40)
FRAMES_PER_UPLOAD = 2  # the default; --frames-per-upload 1 makes every image its own event (as `agegate eval`)
SURFACE = "adult_content"  # the default; --surface judges another of the DEFAULT policy's surfaces
# Groups by age at the first upload, relative to the surface's threshold T: under T, T to T+6 ("near":
# for 18, the 18-24-year-olds a model that cannot tell 20 from 28 struggles with), T+7 and older.
GROUPS = ("under", "near", "above")
NEAR_YEARS = 7
VARIANTS = (
    "independent-raw",
    "independent-calibrated",
    "floor-scalar",
    "floor",
    "floor+mixture",
    "floor-by-age",
    "floor-by-age-max",
    "floor-by-age-max+mixture",
)
MIXTURE_VARIANTS = ("floor+mixture", "floor-by-age-max+mixture")
WORKER_VARIANT = "floor"  # what the worker does: fusion with the model's ErrorFloor, judged with the stored floor


@dataclass
class User:
    age: float  # at the first upload
    look: float
    attrs: dict[str, str]


YOUNG_AGES = (12.0, 25.0)  # every threshold's neighbourhood; --young-ages moves it (9 17 for the 13 surfaces)


def population(
    rng: np.random.Generator, n_young: int, n_older: int, young: tuple[float, float] = YOUNG_AGES
) -> list[User]:
    ages = list(rng.uniform(*young, n_young)) + list(rng.uniform(25, 40, n_older))
    return [User(float(a), float(rng.normal(0, SUBJECT_OFFSET_SD)), sample_attributes(rng)) for a in ages]


def render_uploads(
    users: list[User], uploads: int, seed: int, per_upload: int = FRAMES_PER_UPLOAD
) -> list[list[EncodedFrame]]:
    """Per user, uploads x per_upload frames, each at age + look + fresh per-photo noise."""
    out = []
    for i, u in enumerate(users):
        rng = np.random.default_rng([seed, i])
        frames = []
        for k in range(uploads):
            age = u.age + k * DAY / YEAR_S
            for _ in range(per_upload):
                img = render_face(age + u.look + rng.normal(0, IMAGE_NOISE_SD), u.attrs, rng, size=64)
                frames.append(EncodedFrame(encode_jpeg(img, rng), "image/jpeg"))
        out.append(frames)
    return out


def evidence_for(
    variant: str, event_id: str, t: float, ests: list[FrameEstimate], scale: float, floor: ErrorFloor
) -> tuple[list[Evidence], float]:
    """The variant's evidence for one upload and the floor its fusion never goes below."""
    if variant.startswith("floor"):
        used = ErrorFloor(floor.years) if variant == "floor-scalar" else floor
        ev = event_evidence(event_id, t, [(e.mean, e.std) for e in ests], used)
        return ([ev] if ev is not None else []), used.minimum
    raw = variant == "independent-raw"
    return [Evidence(f"{event_id}/{j}", t, e.mean, e.std / scale if raw else e.std) for j, e in enumerate(ests)], 0.0


def floor_by_age(variant: str, table: FloorTable) -> FloorByAge | None:
    """What `decide` gets as the floor table for this variant (None: the stored scalar floor)."""
    if not variant.startswith("floor-by-age") or not table:
        return None
    return FloorByAge(table.knots, table.values, at_least_stored=variant != "floor-by-age")


def simulate(
    users: list[User],
    estimates: list[list[FrameEstimate]],
    uploads: int,
    scale: float,
    floor: ErrorFloor,
    variant: str,
    model_shape: FloorShape = GAUSSIAN_FLOOR,
    table: FloorTable = NO_FLOOR_TABLE,
    per_upload: int = FRAMES_PER_UPLOAD,
    surface: str = SURFACE,
    policy_file: str | None = None,
) -> dict[str, Any]:
    policy = load_policy(policy_file)
    threshold = threshold_of(surface, policy_file)
    shape = model_shape if variant in MIXTURE_VARIANTS else GAUSSIAN_FLOOR
    by_age = floor_by_age(variant, table)
    rows: dict[int, dict[str, Any]] = {}
    allowed = {n: dict.fromkeys(GROUPS, 0) for n in REPORT_AT if n <= uploads}
    counts = dict.fromkeys(GROUPS, 0)
    cdf: dict[int, list[float]] = {n: [] for n in allowed}  # belief CDF at the true age
    by_group: dict[int, dict[str, list[float]]] = {n: {g: [] for g in counts} for n in allowed}
    said: dict[int, list[tuple[float, bool]]] = {n: [] for n in allowed}  # (P(age >= T) stated, true)
    examples: list[dict[str, Any]] = []
    for u, ests in zip(users, estimates, strict=True):
        group = "under" if u.age < threshold else ("near" if u.age < threshold + NEAR_YEARS else "above")
        counts[group] += 1
        belief: Belief | None = None
        prev: Action | None = None
        for k in range(uploads):
            t = START + k * DAY
            frames = ests[k * per_upload : (k + 1) * per_upload]
            evs, fl = evidence_for(variant, f"e{k}", t, frames, scale, floor)
            belief = fuse(belief, evs, now=t, half_life_s=policy.half_life_s, model_version="m", floor=fl).belief
            d = decide(
                belief,
                PolicyEvent("DEFAULT", surface, t, previous_action=prev),
                policy,
                now=t,
                floor_shape=shape,
                floor_by_age=by_age,
            )
            prev = d.action
            n = k + 1
            if n in allowed:
                true_now = u.age + k * DAY / YEAR_S
                if d.action is Action.ALLOW and true_now < threshold:
                    allowed[n]["under"] += 1
                    if len(examples) < 5:
                        examples.append(
                            {
                                "uploads": n,
                                "true_age": round(true_now, 2),
                                "look": round(u.look, 2),
                                "age_mean": round(d.evidence.age_mean or 0, 2),
                                "age_std": round(d.evidence.age_std or 0, 3),
                            }
                        )
                elif d.action is Action.ALLOW and group != "under":  # (someone who came of age counts nowhere)
                    allowed[n][group] += 1
                if d.evidence.p_at_least_threshold is not None:
                    said[n].append((d.evidence.p_at_least_threshold, true_now >= threshold))
                if belief is not None:  # judged with the floor the decision used
                    seen = judged_belief(belief, t, by_age)
                    cdf[n].append(belief_cdf_at(seen, true_now, t, policy.half_life_s, shape))
                    by_group[n][group].append(cdf[n][-1])
    for n in allowed:
        rows[n] = {
            **{f"{g}_allowed": allowed[n][g] / counts[g] if counts[g] else None for g in counts},
            "under_allowed_count": allowed[n]["under"],
            "coverage": cdf_shares(cdf[n]),
            # Pooled coverage is what a calibrated belief promises; by true age it cannot hold where
            # faces carry no age cue (every 20-28-year-old looks alike): shown so nobody reads it so.
            "coverage_by_true_age": {g: cdf_shares(v) for g, v in by_group[n].items()},
            # What a decision rests on: of the beliefs stating P(age >= T) in a bin, the share really T or over.
            "p_at_least_threshold_reliability": probability_reliability(said[n]),
        }
    return {"threshold": threshold, "users": counts, "by_uploads": rows, "under_allowed_examples": examples}


def threshold_of(surface: str, policy_file: str | None = None) -> float:
    """The DEFAULT jurisdiction's minimum age for this surface (default: the policy the worker ships with)."""
    return load_policy(policy_file).jurisdictions["DEFAULT"].surfaces[surface].min_age


def table(results: dict[str, dict[str, Any]], uploads: int) -> str:
    t = int(next(iter(results.values()))["threshold"])
    lines = [
        f"{'variant':<24} {'uploads':>7} {f'under-{t} ALLOWed':>18} {f'{t}-{t + NEAR_YEARS - 1} ALLOWed':>14} "
        f"{f'{t + NEAR_YEARS}+ ALLOWed':>12} {'cover50':>8} {'cover80':>8} {'cover90':>8} {'cover95':>8}"
    ]
    for variant, res in results.items():
        under = res["users"]["under"]
        for n, row in res["by_uploads"].items():
            cov = row["coverage"]
            lines.append(
                f"{variant:<24} {n:>7} {row['under_allowed_count']:>7}/{under:<4} ({row['under_allowed']:6.1%})"
                f" {row['near_allowed']:>14.1%} {row['above_allowed']:>12.1%} "
                + " ".join(f"{cov[k]:>8.3f}" for k in ("0.50", "0.80", "0.90", "0.95"))
            )
    return "\n".join(lines)


def reliability_table(res: dict[str, Any]) -> str:
    """Stated P(age >= T) against the share really T or older, per bin (n: beliefs), by upload count."""
    rows = res["by_uploads"]
    bins = next(iter(rows.values()))["p_at_least_threshold_reliability"]
    head = " ".join(f"{'[{:.2f},{:.2f}]'.format(b['lo'], b['hi']):>21}" for b in bins)
    lines = [f"{'uploads':>7} {head}", f"{'':>7} " + " ".join(f"{'said / true (n)':>21}" for _ in bins)]
    for n, row in rows.items():
        cells = [
            "-" if b["n"] == 0 else f"{b['mean_p']:.3f} / {b['observed']:.3f} ({b['n']})"
            for b in row["p_at_least_threshold_reliability"]
        ]
        lines.append(f"{n:>7} " + " ".join(f"{c:>21}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="model (default: the demo model, trained and cached when missing)")
    parser.add_argument(
        "--users", type=int, default=400, help="users aged 12-25 or --young-ages (plus a quarter as many 25-40)"
    )
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument(
        "--young-ages",
        type=float,
        nargs=2,
        default=YOUNG_AGES,
        metavar=("LO", "HI"),
        help="ages of the young users (default 12 25; e.g. 9 17 puts half of them under 13 for account_creation)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--frames-per-upload",
        type=int,
        default=FRAMES_PER_UPLOAD,
        help="frames in each upload (one event); 1 fuses every image as its own event, like agegate eval",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--decode-processes",
        type=int,
        default=0,
        help="decode in N processes (AGEGATE_DECODE_PROCESSES, model/decode_pool.py); 0: in this one",
    )
    parser.add_argument("--quick", action="store_true", help="100 users, 10 uploads (a smoke run)")
    parser.add_argument(
        "--surface",
        default=SURFACE,
        help="a surface of the DEFAULT policy: its threshold sets the groups (under, T..T+6, T+7+)",
    )
    parser.add_argument("--policy", help="policy file (default: the packaged DEFAULT policy), e.g. a candidate")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        threshold = threshold_of(args.surface, args.policy)
    except KeyError:
        parser.error(f"--surface {args.surface!r} is not a surface of the DEFAULT policy")
    if args.quick:
        args.users, args.uploads = 100, 10
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
    else:
        from stream.tools.demo import demo_model

        ckpt = demo_model()
    engine = InferenceEngine.from_checkpoint(
        ckpt, device="cpu", threads=args.threads, decode_processes=args.decode_processes
    )
    cal = engine.uncertainty
    rng = np.random.default_rng(args.seed)
    users = population(rng, args.users, max(1, args.users // 4), tuple(args.young_ages))
    frames = render_uploads(users, args.uploads, args.seed, args.frames_per_upload)
    estimates = []
    for fs in frames:
        scored = engine.score(fs)
        if not all(isinstance(r, FrameEstimate) for r in scored):
            raise SystemExit("a rendered frame failed to decode")
        estimates.append([r for r in scored if isinstance(r, FrameEstimate)])
    shape = FloorShape.mixture(cal.floor_shape_weight, cal.floor_shape_narrow)
    model_floor = ErrorFloor(cal.floor_years, cal.floor_ratio)
    by_age = cal.floor_table
    results = {
        v: simulate(
            users,
            estimates,
            args.uploads,
            cal.std_scale,
            model_floor,
            v,
            shape,
            by_age,
            args.frames_per_upload,
            args.surface,
            args.policy,
        )
        for v in VARIANTS
    }
    print(
        f"model {ckpt} (version {engine.model_version}): std_scale {cal.std_scale:.3f}, "
        f"floor {cal.floor_years:.2f} y ({cal.floor_source}), floor ratio {cal.floor_ratio:.3f} "
        f"({cal.floor_ratio_source}, {cal.floor_ratio_subjects} subjects), "
        f"floor shape {shape.weight:.2f} x {shape.narrow:.2f} "
        f"+ {1 - shape.weight:.2f} x {shape.wide:.2f} ({cal.floor_shape_source}), mean map "
        f"{len(cal.mean_knots_pred)} knots"
    )
    bands = ", ".join(f"{k:.1f}: {v:.2f}" for k, v in zip(by_age.knots, by_age.values, strict=True))
    print(f"floor by predicted age: {bands or 'none'} ({by_age.source})")
    print(
        f"population: {len(users)} users ({results['floor']['users']}; young aged {args.young_ages[0]:g}-"
        f"{args.young_ages[1]:g}), one {args.frames_per_upload}-frame upload a "
        f"day to {args.surface} under the DEFAULT policy; look offset sd {SUBJECT_OFFSET_SD} y, photo noise sd "
        f"{IMAGE_NOISE_SD} y"
    )
    print(table(results, args.uploads))
    for variant in VARIANTS[2:]:
        rows = results[variant]["by_uploads"]
        worst = max(row["under_allowed"] for row in rows.values())
        miss, level, at = max(
            (abs(share - float(level)), level, n)
            for n, row in rows.items()
            for level, share in row["coverage"].items()
            if share is not None
        )
        print(
            f"{variant} variant: worst under-{threshold:g} ALLOWed share over upload counts {worst:.2%} "
            "(target <= 0.5%); "
            f"worst coverage miss {100 * miss:.1f} points ({level} interval, {at} uploads; target <= 3)"
        )
    print(
        f"\n{WORKER_VARIANT} variant (what the worker does): stated P(age >= {threshold:g}) against the share "
        "really that old"
    )
    print(reliability_table(results[WORKER_VARIANT]))
    report = {
        "benchmark": "belief_safety",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "checkpoint": str(ckpt),
        "model_version": engine.model_version,
        "uncertainty": {
            "std_scale": cal.std_scale,
            "floor_years": cal.floor_years,
            "floor_source": cal.floor_source,
            "floor_ratio": cal.floor_ratio,
            "floor_ratio_subjects": cal.floor_ratio_subjects,
            "floor_shape": {
                "weight": shape.weight,
                "narrow": shape.narrow,
                "wide": shape.wide,
                "source": cal.floor_shape_source,
            },
            "mean_map_knots": len(cal.mean_knots_pred),
            "floor_table": {
                "knots": list(by_age.knots),
                "values": list(by_age.values),
                "subjects": list(by_age.subjects),
                "source": by_age.source,
            },
        },
        "settings": {
            "users": len(users),
            "young_ages": list(args.young_ages),
            "uploads": args.uploads,
            "seed": args.seed,
            "frames_per_upload": args.frames_per_upload,
            "surface": args.surface,
            "threshold": threshold,
            "policy": args.policy or "packaged",
            "jurisdiction": "DEFAULT",
        },
        "variants": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(report, indent=2, default=lambda x: None if isinstance(x, float) and not math.isfinite(x) else x)
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
