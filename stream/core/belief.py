"""A user's age belief: pure fusion math, no I/O.

We estimate the *birth time*, not the age: a birth time does not drift as the user grows older, so
old evidence stays meaningful and only its confidence decays (design.md, "The user's age belief").

Units, used everywhere (Python and stream/adapters/belief.lua):
- times (birth_time, observed_at, updated_at, now, half-life, tolerances): unix seconds;
- ages and standard deviations: years of YEAR_S seconds (Julian year);
- precision: 1/years^2, so std = 1/sqrt(precision) is in years.

One person's photos share that person's error (someone who looks older looks older in every photo),
so only the independent part of each estimate's error averages out. The belief therefore keeps two
things apart (design.md): the precision P of the *independent* (within-subject) part, which fusion
adds up and decay shrinks, and the error *floor* (the between-subject error, measured by subject on a
validation split and stored with the checkpoint: `ErrorFloor`). The belief's spread is
std = sqrt(1/P + floor^2): a thousand selfies never make it more certain than the model can be about
one person. `event_evidence` turns one event's calibrated frame estimates into one observation.

The floor is the model's between-subject error *for this face*: a model is sure about a child and
unsure about a face of 24 (no age cue between the teens and the first wrinkles), and its persistent
error grows with its uncertainty. A model calibrated with a floor ratio rho (model/uncertainty.py
`estimate_floor_ratio`) gives each frame the floor sqrt(rho) * std (never below
MIN_RATIO_FLOOR_YEARS); older checkpoints give every frame their one scalar floor. Each event carries
its floor (the precision-weighted rms of its frames'), and the belief's floor is the rms of its
events' floors weighted like its mean (the decayed precisions), so the floor that applies is that of
the evidence (and the model version) the belief's mean rests on.

Fusion is done at a common reference time T = the latest evidence time seen. Every contribution
(the old belief and each new observation) is decayed from its own time to T, then combined by
precision weighting. Because decay is a common multiplicative factor, the result does not depend on
the order observations arrive in, with or without decay, and late (out-of-order) events are
weighted as if they had arrived in order. stream/adapters/belief.lua performs the same operations in the same
order so that Redis and Python agree to floating-point tolerance.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import pairwise

YEAR_S = 365.25 * 86400.0
# An ID check or reviewer gives a birth date to within days; 0.01 years is ~3.7 days.
VERIFIED_STD_YEARS = 0.01
VERIFIED_PRECISION = 1.0 / (VERIFIED_STD_YEARS * VERIFIED_STD_YEARS)
# Estimates outside this range are model failures, not ages.
MIN_AGE_YEARS = 0.0
MAX_AGE_YEARS = 130.0
MIN_STD_YEARS = 0.05  # a model claiming more certainty than this is not believed (one frame ~ 18 days)
# Frames of one event share pose, light and camera: their independent errors are correlated too. With
# correlation rho the mean of k frames has variance w * (rho + (1 - rho) / k), so one event adds at most
# 1/rho times the precision of its frames (twice, here) however many frames it carries.
FRAME_CORRELATION_IN_EVENT = 0.5
# However a frame's calibrated std compares with the floor, at least this share of its variance is
# counted as independent: a frame claiming less error than the floor cannot pin the belief.
MIN_INDEPENDENT_VARIANCE_SHARE = 0.25
# With a floor ratio, the least floor any frame gets (years): a model that claims a small std for a face
# is still not believed to know that person's age to better than this. Generous: the synthetic
# generator alone puts 2 years of look-older/younger offset on every person, and real faces more.
MIN_RATIO_FLOOR_YEARS = 1.0


class RefusalReason(StrEnum):
    FUTURE = "future"  # observed_at > now + future_tolerance_s
    TOO_OLD = "too_old"  # observed_at < now - max_past_s
    INVALID = "invalid"  # non-finite or out-of-range mean/std


@dataclass(frozen=True, slots=True)
class ClockSkewRule:
    """How far event time may disagree with processing time before evidence is refused.

    Evidence from up to `future_tolerance_s` in the future is clamped to `now` (producer clocks
    drift a little); further in the future is refused: trusting it would move `updated_at` ahead of
    real time and make every later event look late. Evidence older than `max_past_s` is refused:
    its event id would no longer be remembered for deduplication (the id log is trimmed to that
    window), so accepting it could double-count a redelivery.
    """

    future_tolerance_s: float = 300.0
    max_past_s: float = 400 * 86400.0


@dataclass(frozen=True, slots=True)
class ErrorFloor:
    """A model version's error floor: how much of a frame's error does not average out over one person.

    `ratio` 0 (checkpoints calibrated before ratios, or where the floor could not be estimated): every
    frame gets the scalar floor `years`. `ratio` > 0: a frame with calibrated std s gets
    max(MIN_RATIO_FLOOR_YEARS, sqrt(ratio) * s); `years` (the scalar estimate) is then only reported.
    """

    years: float
    ratio: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.years) and self.years >= 0.0):
            raise ValueError(f"error floor years must be finite and >= 0, got {self.years!r}")
        if not (math.isfinite(self.ratio) and 0.0 <= self.ratio <= 1.0):
            raise ValueError(f"error floor ratio must be in [0, 1], got {self.ratio!r}")

    def for_frame(self, std: float) -> float:
        """The floor (years) of one frame with this calibrated std."""
        if self.ratio <= 0.0:
            return self.years
        return max(MIN_RATIO_FLOOR_YEARS, math.sqrt(self.ratio) * std)

    @property
    def minimum(self) -> float:
        """The least floor any evidence of this model version has: what fusion never goes below."""
        return self.years if self.ratio <= 0.0 else MIN_RATIO_FLOOR_YEARS


@dataclass(frozen=True, slots=True)
class Evidence:
    event_id: str
    observed_at: float
    mean_age: float
    std_age: float  # of the independent error only
    floor: float = 0.0  # years: the event's floor (`event_evidence`); fusion never uses less than its version's


@dataclass(frozen=True, slots=True)
class Refusal:
    event_id: str
    reason: RefusalReason
    observed_at: float


@dataclass(frozen=True, slots=True)
class Belief:
    birth_time: float
    precision: float
    updated_at: float
    observations: int  # events fused (an event's frames are one observation)
    verified: bool
    model_version: str
    # Years; what the belief's std uses: max(floor_rms, floor_earlier) (0 once verified).
    floor: float = 0.0
    # The rms of the fused events' floors, weighted like the mean; None: equal to `floor` (a belief
    # stored before the rms was kept apart).
    floor_rms: float | None = None
    # The largest floor the belief had under earlier model versions: a version switch never narrows it.
    floor_earlier: float = 0.0

    def age_at(self, t: float) -> float:
        return (t - self.birth_time) / YEAR_S

    def std_at(self, t: float, half_life_s: float) -> float:
        """sqrt(1/P + floor^2) after decay to t: the floor never averages out."""
        return belief_std(decay(self, t, half_life_s).precision, self.floor)

    def independent_var_at(self, t: float, half_life_s: float) -> float:
        """1/P after decay to t: the part of the belief's variance that more evidence shrinks."""
        return 1.0 / decay(self, t, half_life_s).precision

    def p_age_at_least(
        self, threshold_years: float, t: float, half_life_s: float, shape: FloorShape | None = None
    ) -> float:
        """P(age >= threshold) at t, with the floor's error shaped by `shape` (None: Gaussian)."""
        return p_at_least_shaped(
            self.age_at(t),
            self.independent_var_at(t, half_life_s),
            self.floor,
            threshold_years,
            shape or GAUSSIAN_FLOOR,
        )


@dataclass(frozen=True, slots=True)
class FloorShape:
    """The shape of the error that does not average out over one person's photos.

    The floor (years) is that error's root mean square; how it is spread over people is not always
    Gaussian: a model can be close for most people and far off for a few (a face that looks much
    older, an age the model handles badly). That is a leptokurtic error, which a single Gaussian
    cannot describe: any std that holds the 95% interval over-covers the 50% one. The shape is a
    two-component scale mixture: a share `weight` of people has floor error sd `narrow * floor`, the
    rest `wide * floor`, with weight * narrow^2 + (1 - weight) * wide^2 = 1 so `floor` keeps its
    meaning as the second moment (a belief's reported std is unchanged; only P(age >= T) and its
    intervals see the shape). Fitted per model version with its floor (model/uncertainty.py) and
    passed in from the live model's calibration; GAUSSIAN_FLOOR (weight 1) is the plain Gaussian.
    """

    weight: float = 1.0  # share of the narrow component, in (0, 1]
    narrow: float = 1.0  # its sd as a multiple of the floor, <= 1
    wide: float = 1.0  # the other component's, >= 1

    def __post_init__(self) -> None:
        if not (0.0 < self.weight <= 1.0 and 0.0 < self.narrow <= 1.0 <= self.wide and math.isfinite(self.wide)):
            raise ValueError(f"invalid floor shape {self!r}: need 0 < weight <= 1, 0 < narrow <= 1 <= wide")
        second = self.weight * self.narrow**2 + (1.0 - self.weight) * self.wide**2
        if abs(second - 1.0) > 1e-6:
            raise ValueError(f"floor shape must keep the floor's second moment: got {second:.6f}, need 1")

    @classmethod
    def mixture(cls, weight: float, narrow: float) -> FloorShape:
        """The shape with this narrow component; the wide ratio follows from the second-moment constraint."""
        if weight >= 1.0:
            return GAUSSIAN_FLOOR
        wide = math.sqrt((1.0 - weight * narrow * narrow) / (1.0 - weight))
        return cls(weight, narrow, wide)

    @property
    def components(self) -> tuple[tuple[float, float], ...]:
        """(weight, ratio) pairs with non-zero weight."""
        if self.weight >= 1.0:
            return ((1.0, self.narrow),)
        return ((self.weight, self.narrow), (1.0 - self.weight, self.wide))


GAUSSIAN_FLOOR = FloorShape()


@dataclass(frozen=True, slots=True)
class FloorByAge:
    """The error floor as a function of the belief's mean age: the live model's floor table.

    The person-level error depends on the predicted age (small for children, large where the faces
    carry little age cue), so one scalar over-covers some ages and under-covers others. The table
    (knots: predicted ages, strictly increasing; values: the band floors in years; fitted per model
    version with its floor, model/uncertainty.py `fit_floor_table`) is evaluated at the belief's mean
    by linear interpolation, clamped to the end values outside the knots. Only the decision sees it:
    fusion keeps the scalar floor (the Lua script and the Redis hash are unchanged).

    `at_least_stored` (the default) never lets the table go below the belief's stored floor (the
    floor fusion kept: its events' floors, never narrower than at a model switch): the table may
    only widen a belief, so a belief that mixes versions, or a table fitted on a population unlike
    the live one, never proves more than fusion allowed. False evaluates the table alone (measured in
    bench/belief_safety.py, not used by the worker).
    """

    knots: tuple[float, ...]
    values: tuple[float, ...]
    at_least_stored: bool = True

    def __post_init__(self) -> None:
        if len(self.knots) != len(self.values) or len(self.knots) < 2:
            raise ValueError(f"a floor table needs as many values as knots, at least two: {self!r}")
        if not all(math.isfinite(k) for k in self.knots) or any(b <= a for a, b in pairwise(self.knots)):
            raise ValueError(f"floor table knots must be finite and strictly increasing: {self.knots!r}")
        if not all(math.isfinite(v) and v > 0 for v in self.values):
            raise ValueError(f"floor table values must be positive and finite: {self.values!r}")

    def at(self, mean_age: float) -> float:
        """The table's floor at this mean age (np.interp semantics, pure Python)."""
        ks, vs = self.knots, self.values
        if mean_age <= ks[0]:
            return vs[0]
        if mean_age >= ks[-1]:
            return vs[-1]
        i = bisect_right(ks, mean_age)
        w = (mean_age - ks[i - 1]) / (ks[i] - ks[i - 1])
        return vs[i - 1] + w * (vs[i] - vs[i - 1])

    def floor(self, mean_age: float, stored: float) -> float:
        """The floor a belief with this mean and stored floor is judged with."""
        by_age = self.at(mean_age)
        return max(by_age, stored) if self.at_least_stored else by_age


def judged_belief(belief: Belief, t: float, by_age: FloorByAge | None) -> Belief:
    """The belief as `decide` judges it at t given a floor table (FloorByAge): an estimated belief's
    floor widened by the table at its mean (None, or a verified belief: unchanged). Benchmarks judge
    this one, so what they measure is what such a decision would use."""
    if by_age is None or belief.verified:
        return belief
    return replace(belief, floor=by_age.floor(belief.age_at(t), belief.floor))


def p_at_least(mean: float, std: float, threshold: float) -> float:
    """P(age >= threshold) for a Gaussian belief."""
    return 0.5 * math.erfc((threshold - mean) / (std * math.sqrt(2.0)))


def p_at_least_shaped(mean: float, independent_var: float, floor: float, threshold: float, shape: FloorShape) -> float:
    """P(age >= threshold) when the error is the independent part (variance 1/P, Gaussian) plus the
    floor's error shaped by `shape`: sum_i w_i Phi((mean - T) / sqrt(1/P + (r_i floor)^2)).
    With GAUSSIAN_FLOOR it equals p_at_least(mean, sqrt(1/P + floor^2), T)."""
    return sum(
        w * p_at_least(mean, math.sqrt(independent_var + (r * floor) ** 2), threshold) for w, r in shape.components
    )


def belief_quantile(
    q: float, mean: float, independent_var: float, floor: float, shape: FloorShape, *, tol: float = 1e-9
) -> float:
    """The age a with P(age <= a) = q, by bisection on the (monotone) mixture CDF."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    widest = math.sqrt(independent_var + (max(r for _, r in shape.components) * floor) ** 2)
    lo, hi = mean - 40.0 * widest, mean + 40.0 * widest
    while hi - lo > tol * max(1.0, widest):
        mid = 0.5 * (lo + hi)
        if 1.0 - p_at_least_shaped(mean, independent_var, floor, mid, shape) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def belief_interval(
    level: float, mean: float, independent_var: float, floor: float, shape: FloorShape
) -> tuple[float, float]:
    """The central `level` interval of the belief (equal tails), by inverting its CDF."""
    return (
        belief_quantile(0.5 - level / 2, mean, independent_var, floor, shape),
        belief_quantile(0.5 + level / 2, mean, independent_var, floor, shape),
    )


def belief_std(precision: float, floor: float) -> float:
    """The spread of a belief whose independent evidence has precision P, given the error floor."""
    return math.sqrt(1.0 / precision + floor * floor)


def independent_variance(std: float, floor: float) -> float:
    """The part of a calibrated frame variance that averages out over one person's photos."""
    var = std * std
    return max(var - floor * floor, MIN_INDEPENDENT_VARIANCE_SHARE * var)


def event_evidence(
    event_id: str, observed_at: float, frames: Sequence[tuple[float, float]], floor: ErrorFloor | float
) -> Evidence | None:
    """One event's frame estimates (mean, calibrated std) as one observation of independent error.

    Each frame's variance splits into its floor (`floor.for_frame`; a float is a scalar floor) and
    the independent rest. Frames are weighted by their independent precision; the event's variance
    is inflated by the within-event correlation so that many frames of one event cannot stand in for
    many events; the event's floor is the rms of its frames' floors under the same weights.
    None when the event has no frame estimate.
    """
    if not frames:
        return None
    model_floor = floor if isinstance(floor, ErrorFloor) else ErrorFloor(floor)
    floors = [model_floor.for_frame(std) for _, std in frames]
    precisions = [1.0 / independent_variance(std, f) for (_, std), f in zip(frames, floors, strict=True)]
    total = sum(precisions)
    mean = sum(p * m for p, (m, _) in zip(precisions, frames, strict=True)) / total
    floor_sq = sum(p * f * f for p, f in zip(precisions, floors, strict=True)) / total
    inflation = 1.0 + FRAME_CORRELATION_IN_EVENT * (len(frames) - 1)
    return Evidence(event_id, observed_at, mean, math.sqrt(inflation / total), math.sqrt(floor_sq))


def evidence_point(ev: Evidence) -> tuple[float, float]:
    """A frame estimate as (birth time, precision)."""
    return ev.observed_at - ev.mean_age * YEAR_S, 1.0 / (ev.std_age * ev.std_age)


def decay_factor(dt: float, half_life_s: float) -> float:
    if dt <= 0.0:
        return 1.0
    return float(2.0 ** (-dt / half_life_s))


def decay(belief: Belief, t: float, half_life_s: float) -> Belief:
    """The belief as of time t: precision decayed and `updated_at` moved to t, so decaying twice
    never double-counts. A verified belief does not decay (see apply_verified); t in the past of
    the belief changes nothing (confidence never grows back)."""
    if t <= belief.updated_at:
        return belief
    if belief.verified:
        return replace(belief, updated_at=t)
    return replace(belief, precision=belief.precision * decay_factor(t - belief.updated_at, half_life_s), updated_at=t)


def is_valid(ev: Evidence) -> bool:
    return (
        math.isfinite(ev.observed_at)
        and math.isfinite(ev.mean_age)
        and math.isfinite(ev.std_age)
        and MIN_AGE_YEARS <= ev.mean_age <= MAX_AGE_YEARS
        and ev.std_age >= MIN_STD_YEARS
    )


@dataclass(frozen=True, slots=True)
class FuseResult:
    """What happened to each evidence: applied, duplicate, ignored (belief is verified), refused."""

    belief: Belief | None
    applied: tuple[str, ...]
    duplicates: tuple[str, ...]
    ignored: tuple[str, ...]
    refused: tuple[Refusal, ...]
    seen: frozenset[str]  # event ids remembered after this update (input seen + applied + ignored)


def fuse(
    belief: Belief | None,
    evidences: Sequence[Evidence],
    *,
    now: float,
    half_life_s: float,
    model_version: str,
    floor: float,
    seen: Iterable[str] = (),
    skew: ClockSkewRule = ClockSkewRule(),
) -> FuseResult:
    """Fuse a batch of evidence into a belief; idempotent per event id via `seen`.

    Each evidence's `std_age` is the std of its *independent* error and `floor` its floor (see
    `event_evidence`); `floor` here is the least floor of `model_version` (`ErrorFloor.minimum`): no
    evidence, and no belief it updates, counts with less. The belief's floor is the rms of its
    events' floors weighted by their decayed precisions (the weights of its mean).

    Order of checks per evidence (the Lua script keeps the same order): duplicate id, invalid,
    too far in the future, too old, then clamp small future skew to `now`.
    """
    seen_now = set(seen)
    applied: list[str] = []
    duplicates: list[str] = []
    ignored: list[str] = []
    refused: list[Refusal] = []
    points: list[tuple[float, float, float, float]] = []  # (t, birth_time, precision, floor)
    for ev in evidences:
        if ev.event_id in seen_now:
            duplicates.append(ev.event_id)
            continue
        if not is_valid(ev):
            refused.append(Refusal(ev.event_id, RefusalReason.INVALID, ev.observed_at))
            continue
        if ev.observed_at > now + skew.future_tolerance_s:
            refused.append(Refusal(ev.event_id, RefusalReason.FUTURE, ev.observed_at))
            continue
        if ev.observed_at < now - skew.max_past_s:
            refused.append(Refusal(ev.event_id, RefusalReason.TOO_OLD, ev.observed_at))
            continue
        seen_now.add(ev.event_id)
        if belief is not None and belief.verified:
            ignored.append(ev.event_id)
            continue
        t = min(ev.observed_at, now)
        b, p = evidence_point(Evidence(ev.event_id, t, ev.mean_age, ev.std_age))
        points.append((t, b, p, ev.floor if math.isfinite(ev.floor) and ev.floor > floor else floor))
        applied.append(ev.event_id)
    result = _combine(belief, points, half_life_s=half_life_s, model_version=model_version, floor=floor)
    return FuseResult(result, tuple(applied), tuple(duplicates), tuple(ignored), tuple(refused), frozenset(seen_now))


def _combine(
    belief: Belief | None,
    points: list[tuple[float, float, float, float]],
    *,
    half_life_s: float,
    model_version: str,
    floor: float,
) -> Belief | None:
    if not points:
        return belief
    ref_t = max(t for t, _, _, _ in points)
    if belief is not None:
        ref_t = max(ref_t, belief.updated_at)
    # Accumulate offsets from an anchor birth time: products of precision and ~1e9 s would lose digits.
    anchor = belief.birth_time if belief is not None else points[0][1]
    total_p = 0.0
    weighted = 0.0
    floor_sq = 0.0  # sum of weight * floor^2: the floor is the rms under the mean's weights
    earlier = 0.0
    if belief is not None:
        w = belief.precision * decay_factor(ref_t - belief.updated_at, half_life_s)
        total_p += w
        old_rms = belief.floor if belief.floor_rms is None else belief.floor_rms
        old_floor = max(old_rms, floor)  # a belief stored before floors existed counts with this version's
        floor_sq += w * old_floor * old_floor
        earlier = belief.floor_earlier
        if belief.model_version not in ("", model_version):  # a version switch never narrows the belief
            earlier = max(earlier, belief.floor)
    for t, b, p, f in points:
        w = p * decay_factor(ref_t - t, half_life_s)
        total_p += w
        weighted += w * (b - anchor)
        floor_sq += w * f * f
    rms = math.sqrt(floor_sq / total_p)
    return Belief(
        birth_time=anchor + weighted / total_p,
        precision=total_p,
        updated_at=ref_t,
        observations=(belief.observations if belief is not None else 0) + len(points),
        verified=False,
        model_version=model_version,
        floor=max(rms, earlier),
        floor_rms=rms,
        floor_earlier=earlier,
    )


def apply_verified(belief: Belief | None, *, verified_age: float, verified_at: float, now: float) -> Belief:
    """A verified age replaces the belief: authoritative, very high precision, no decay.

    It does not decay because an ID-checked birth date does not become less true with time
    (only model estimates get stale as the face changes); the TTL still bounds how long it is kept.
    `verified_at` slightly in the future is clamped to `now` like any evidence.
    """
    t = min(verified_at, now)
    return Belief(
        birth_time=t - verified_age * YEAR_S,
        precision=VERIFIED_PRECISION,
        updated_at=max(t, belief.updated_at) if belief is not None else t,
        observations=(belief.observations if belief is not None else 0) + 1,
        verified=True,
        model_version=belief.model_version if belief is not None else "",
    )


def verified_refusal(
    event_id: str, verified_age: float, verified_at: float, now: float, skew: ClockSkewRule
) -> Refusal | None:
    """Why a verified age cannot be applied, or None. Old verifications stay valid (no TOO_OLD)."""
    if not (
        math.isfinite(verified_age) and math.isfinite(verified_at) and MIN_AGE_YEARS <= verified_age <= MAX_AGE_YEARS
    ):
        return Refusal(event_id, RefusalReason.INVALID, verified_at)
    if verified_at > now + skew.future_tolerance_s:
        return Refusal(event_id, RefusalReason.FUTURE, verified_at)
    return None
