"""How honest a fused belief's interval is: coverage of the true age by the number of events fused.

Frame-level calibration (model/uncertainty.py) makes one photo's std honest. Whether a *belief* stays
honest after many photos of one person depends on fusion: if errors of one person's photos were
treated as independent, the reported std would shrink as 1/sqrt(n) while the person's real error
(looking older or younger) does not. This measures it directly: for each subject with at least n
images, fuse their first n images (each its own event, with the model's error floor) the way the
worker does, and count how often the true age falls inside the belief's central 50/80/90/95%
intervals. Calibrated means each share is close to its nominal level at every n.

The intervals are the belief's own: with a FloorShape (the person-level error as a scale mixture)
they come from inverting the mixture CDF. "True age inside the central L interval" is the same as
"the belief's CDF at the true age lies in [(1-L)/2, (1+L)/2]", which is what is counted here
(exact, and no bisection per subject); `belief_interval` in stream/core/belief.py gives the
interval itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from statistics import NormalDist
from typing import Any

from stream.core.belief import (
    GAUSSIAN_FLOOR,
    Belief,
    ErrorFloor,
    Evidence,
    FloorShape,
    event_evidence,
    fuse,
    p_at_least_shaped,
)

NOMINAL_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
# Up to 40: the issue-11 target is honest coverage from 1 to 40 fused images (a user with tens of
# uploads); a count no subject has enough images for is reported with 0 subjects.
FUSED_COUNTS: tuple[int, ...] = (1, 2, 4, 8, 16, 40)
_NOW = 1.7e9
_Z = {level: NormalDist().inv_cdf(0.5 + level / 2) for level in NOMINAL_LEVELS}


def interval_shares(z_scores: Sequence[float]) -> dict[str, float | None]:
    """Share of |z| inside each nominal central interval (None without data)."""
    n = len(z_scores)
    return {f"{level:.2f}": (sum(abs(z) <= _Z[level] for z in z_scores) / n if n else None) for level in NOMINAL_LEVELS}


def cdf_shares(cdf_values: Sequence[float]) -> dict[str, float | None]:
    """Share of beliefs whose CDF at the true age lies inside each nominal central interval, i.e. whose
    central interval holds the true age (None without data)."""
    n = len(cdf_values)
    return {
        f"{level:.2f}": (sum(abs(u - 0.5) <= level / 2 for u in cdf_values) / n if n else None)
        for level in NOMINAL_LEVELS
    }


def belief_cdf_at(belief: Belief, age: float, t: float, half_life_s: float, shape: FloorShape) -> float:
    """P(age' <= age) under the belief at t: where the true age falls in the belief's distribution."""
    return 1.0 - p_at_least_shaped(
        belief.age_at(t), belief.independent_var_at(t, half_life_s), belief.floor, age, shape
    )


def fuse_images(
    user: str,
    frames: Sequence[tuple[float, float]],
    floor: ErrorFloor | float,
    *,
    now: float,
    half_life_s: float,
    model_version: str,
) -> Belief | None:
    """A user's images (estimated mean, calibrated std), each its own event a minute apart up to `now`,
    fused from no belief with the real `fuse`: what the worker would hold after those uploads. Used by
    the coverage above and by `agegate eval`'s policy replay, so both judge the same belief."""
    model_floor = floor if isinstance(floor, ErrorFloor) else ErrorFloor(floor)
    evidence: list[Evidence] = []
    for k, frame in enumerate(frames):
        ev = event_evidence(f"{user}/{k}", now - 60.0 * (len(frames) - k), [frame], model_floor)
        if ev is not None:
            evidence.append(ev)
    return fuse(
        None, evidence, now=now, half_life_s=half_life_s, model_version=model_version, floor=model_floor.minimum
    ).belief


def belief_coverage(
    subjects: Mapping[str, Sequence[tuple[float, float, float]]],
    *,
    floor: ErrorFloor | float,
    counts: Sequence[int] = FUSED_COUNTS,
    floor_shape: FloorShape = GAUSSIAN_FLOOR,
) -> dict[str, Any]:
    """`subjects`: per subject, its images as (true age, estimated mean, calibrated std), in order.

    The target after fusing n images is the mean of their true ages (each estimate is of its own
    image's age). Returns per n: subjects used and the share inside each nominal interval, plus the
    frame-level figures (every image alone, its own std, no floor) beside them. `floor_shape` shapes
    the belief's floor error (the model's FloorShape; default Gaussian). `floor` is the model's
    ErrorFloor (a float: a scalar floor for every image).
    """
    model_floor = floor if isinstance(floor, ErrorFloor) else ErrorFloor(floor)
    frame_z = [(m - age) / s for images in subjects.values() for age, m, s in images if s > 0]
    by_count: dict[str, Any] = {}
    for n in counts:
        cdfs: list[float] = []
        for sid, images in subjects.items():
            if len(images) < n:
                continue
            used = images[:n]
            belief = fuse_images(
                sid, [(m, s) for _, m, s in used], model_floor, now=_NOW, half_life_s=math.inf, model_version="eval"
            )
            if belief is None:
                continue
            target = sum(age for age, _, _ in used) / n
            cdfs.append(belief_cdf_at(belief, target, _NOW, math.inf, floor_shape))
        by_count[str(n)] = {"subjects": len(cdfs), "coverage": cdf_shares(cdfs)}
    return {
        "floor_years": model_floor.years,
        "floor_ratio": model_floor.ratio,
        "floor_shape": {"weight": floor_shape.weight, "narrow": floor_shape.narrow, "wide": floor_shape.wide},
        "nominal": [f"{level:.2f}" for level in NOMINAL_LEVELS],
        "frame": {"images": len(frame_z), "coverage": interval_shares(frame_z)},
        "by_fused_count": by_count,
    }


# Bins of P(age >= T) for the reliability table: fine where decisions are made (the high end,
# where ALLOW and "clearly adult" live; the low end, where BLOCK lives), coarse in between.
RELIABILITY_EDGES: tuple[float, ...] = (0.0, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 1.0)


def probability_reliability(
    judged: Sequence[tuple[float, bool]], edges: Sequence[float] = RELIABILITY_EDGES
) -> list[dict[str, Any]]:
    """Is P(age >= T) as honest as its name? Per bin of the stated probability: how many beliefs, their
    mean stated P, and the share that really were at least T.

    `judged`: (stated P(age >= T), whether the true age was >= T) per belief. Interval coverage is a
    proxy; this is the number a decision rests on. Honest or safe means the observed share is at
    least the stated one in the top bins (a belief that says 0.97 is an adult at least 97% of the
    time); a shortfall there is a wrong ALLOW waiting to happen. The last bin includes P = 1.
    """
    out: list[dict[str, Any]] = []
    for i, (lo, hi) in enumerate(pairwise(edges)):
        last = i == len(edges) - 2
        cell = [(p, adult) for p, adult in judged if lo <= p < hi or (last and p == hi)]
        n = len(cell)
        out.append(
            {
                "lo": lo,
                "hi": hi,
                "n": n,
                "mean_p": sum(p for p, _ in cell) / n if n else None,
                "observed": sum(adult for _, adult in cell) / n if n else None,
            }
        )
    return out
