"""The floor as a share of each frame's variance (model/uncertainty.py `estimate_floor_ratio`,
stream/core/belief.py `ErrorFloor`): fitted by subject, stored with the model, used by fusion."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.checkpoint import save_checkpoint
from model.engine import InferenceEngine
from model.models import create_model
from model.uncertainty import (
    MAX_FLOOR_RATIO,
    UncertaintyCalibration,
    estimate_floor_ratio,
    fit_calibration,
)
from stream.core.belief import (
    MIN_RATIO_FLOOR_YEARS,
    ErrorFloor,
    event_evidence,
    fuse,
)

NOW = 1_750_000_000.0
DAY = 86400.0
HALF_LIFE = 365 * DAY


def _heteroscedastic(rho: float, subjects: int = 3000, per: int = 4, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Errors whose sd differs by subject (s_i from 1 to 6 years) with a persistent share rho of the variance."""
    rng = np.random.default_rng(seed)
    s = np.repeat(rng.uniform(1.0, 6.0, subjects), per)
    u = np.repeat(rng.normal(0.0, 1.0, subjects), per)
    w = rng.normal(0.0, 1.0, subjects * per)
    errors = s * (math.sqrt(rho) * u + math.sqrt(1.0 - rho) * w)
    ids = np.repeat(np.arange(subjects), per)
    return errors, s, ids


@pytest.mark.parametrize("rho", [0.2, 0.5, 0.7])
def test_the_ratio_recovers_a_known_persistent_share(rho: float) -> None:
    errors, s, ids = _heteroscedastic(rho)
    got = estimate_floor_ratio(errors, s, ids.tolist())
    assert got.source == "estimated"
    assert got.subjects == 3000
    assert got.ratio == pytest.approx(rho, abs=0.04)


def test_the_ratio_is_scale_free_and_clipped() -> None:
    errors, s, ids = _heteroscedastic(0.5)
    a = estimate_floor_ratio(errors, s, ids.tolist()).ratio
    b = estimate_floor_ratio(errors, 3.0 * s, ids.tolist()).ratio  # an uncalibrated std: same share
    assert a == pytest.approx(b)
    only_persistent = np.repeat(np.random.default_rng(1).normal(0, 3, 500), 4)
    clipped = estimate_floor_ratio(only_persistent, np.full(2000, 3.0), np.repeat(np.arange(500), 4).tolist())
    assert clipped.ratio == MAX_FLOOR_RATIO


def test_without_subjects_with_several_images_there_is_no_ratio(caplog: pytest.LogCaptureFixture) -> None:
    errors, s, _ = _heteroscedastic(0.5, subjects=100, per=1)
    with caplog.at_level(logging.WARNING, logger="model.uncertainty"):
        cal = fit_calibration(errors, s, [f"img{i}" for i in range(100)])
    assert cal.floor_ratio == 0.0  # the scalar (default, conservative) floor applies to every frame
    assert cal.floor_source.startswith("default:")
    assert "cannot be estimated" in caplog.text


def test_fit_calibration_stores_the_ratio_and_it_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    errors, s, ids = _heteroscedastic(0.5, subjects=400)
    cal = fit_calibration(errors, s, ids.tolist())
    assert cal.floor_ratio == pytest.approx(0.5, abs=0.08)
    assert cal.floor_ratio_subjects == 400
    path = save_checkpoint(
        tmp_path / "m.safetensors", create_model("age_regressor"), extra={"uncertainty": cal.to_dict()}
    )
    engine = InferenceEngine.from_checkpoint(path, device="cpu")
    assert engine.floor_ratio == cal.floor_ratio
    assert engine.uncertainty.floor_ratio_source == "estimated"


def test_a_calibration_from_before_ratios_loads_as_the_scalar_floor() -> None:
    old = {k: v for k, v in UncertaintyCalibration(floor_years=2.5).to_dict().items() if k != "floor_ratio"}
    cal = UncertaintyCalibration.from_dict(old)
    assert cal.floor_ratio == 0.0
    floor = ErrorFloor(cal.floor_years, cal.floor_ratio)
    assert floor.for_frame(0.5) == floor.for_frame(9.0) == floor.minimum == 2.5


def test_invalid_floors_are_refused() -> None:
    with pytest.raises(ValueError, match="ratio"):
        ErrorFloor(2.0, 1.5)
    with pytest.raises(ValueError, match="years"):
        ErrorFloor(math.nan)
    with pytest.raises(ValueError, match="floor_ratio"):
        UncertaintyCalibration(floor_ratio=0.9)


def test_a_frame_s_floor_follows_its_std_and_never_goes_below_the_least() -> None:
    floor = ErrorFloor(3.0, 0.5)
    assert floor.for_frame(4.0) == pytest.approx(math.sqrt(0.5) * 4.0)
    assert floor.for_frame(0.5) == MIN_RATIO_FLOOR_YEARS
    assert floor.minimum == MIN_RATIO_FLOOR_YEARS


def test_an_event_s_floor_is_the_rms_of_its_frames_under_their_weights() -> None:
    floor = ErrorFloor(3.0, 0.5)
    ev = event_evidence("e", NOW, [(10.0, 2.0), (12.0, 4.0)], floor)
    assert ev is not None
    # independent variances (1 - rho) s^2: 2 and 8; precisions 1/2 and 1/8; floors^2 rho s^2: 2 and 8
    assert ev.floor == pytest.approx(math.sqrt((0.5 * 2 + 0.125 * 8) / 0.625))
    assert ev.mean_age == pytest.approx((0.5 * 10 + 0.125 * 12) / 0.625)


def test_a_sure_face_and_an_unsure_one_get_the_floors_their_model_gives_them() -> None:
    """The point of the ratio: a child the model is sure of is not judged with the floor of a face of 24."""
    floor = ErrorFloor(3.3, 0.55)
    child = [event_evidence(f"c{i}", NOW - i * DAY, [(10.0, 2.5), (10.5, 2.5)], floor) for i in range(20)]
    adult = [event_evidence(f"a{i}", NOW - i * DAY, [(24.0, 4.5), (23.0, 4.5)], floor) for i in range(20)]
    kid = fuse(None, [e for e in child if e], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=1.0).belief
    grown = fuse(None, [e for e in adult if e], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=1.0).belief
    assert kid is not None
    assert grown is not None
    assert kid.floor == pytest.approx(math.sqrt(0.55) * 2.5)
    assert grown.floor == pytest.approx(math.sqrt(0.55) * 4.5)


frame = st.tuples(st.floats(5.0, 80.0), st.floats(0.3, 8.0))


@given(
    st.lists(st.lists(frame, min_size=1, max_size=4), min_size=1, max_size=60),
    st.floats(0.0, MAX_FLOOR_RATIO),
)
def test_with_a_ratio_the_fused_std_never_falls_below_the_smallest_frame_floor(
    events: list[list[tuple[float, float]]], rho: float
) -> None:
    floor = ErrorFloor(3.0, rho)
    evs = [event_evidence(f"e{i}", NOW - i * DAY, frames, floor) for i, frames in enumerate(events)]
    belief = fuse(
        None, [e for e in evs if e], now=NOW, half_life_s=HALF_LIFE, model_version="m", floor=floor.minimum
    ).belief
    assert belief is not None
    least = min(floor.for_frame(s) for frames in events for _, s in frames)
    assert belief.std_at(NOW, HALF_LIFE) >= least * (1 - 1e-12)
    assert belief.floor >= floor.minimum * (1 - 1e-12)


def test_a_model_switch_never_narrows_the_belief_and_the_new_evidence_weighs_in_after() -> None:
    wide = event_evidence("a", NOW - 2 * DAY, [(20.0, 3.0)], ErrorFloor(3.0))
    first = fuse(None, [wide] if wide else [], now=NOW, half_life_s=HALF_LIFE, model_version="v1", floor=3.0).belief
    assert first is not None
    assert first.floor == 3.0
    narrow = ErrorFloor(3.0, 0.3)
    evs = [event_evidence(f"b{i}", NOW, [(20.0, 2.0)], narrow) for i in range(30)]
    switched = fuse(
        first, [e for e in evs if e], now=NOW, half_life_s=HALF_LIFE, model_version="v2", floor=narrow.minimum
    ).belief
    assert switched is not None
    assert switched.floor_earlier == 3.0
    assert switched.floor == 3.0  # the larger floor of the versions mixed
    assert switched.floor_rms is not None
    assert switched.floor_rms < 3.0  # what the evidence alone says: mostly v2's


def test_the_shape_is_fitted_relative_to_the_ratio_floor() -> None:
    """Persistent error Gaussian relative to each person's std, but stds that differ by person: in
    years that is a scale mixture, which the ratio already gives fusion. Fitted in years, the shape
    would apply the spread twice; fitted relative to the ratio floor, it stays Gaussian."""
    errors, s, ids = _heteroscedastic(0.5, subjects=4000)
    in_years = fit_calibration(errors, np.full(errors.size, 3.0), ids.tolist())  # no std to standardise by
    assert in_years.floor_shape_weight < 1.0  # the premise: in years the error is a mixture
    cal = fit_calibration(errors, s, ids.tolist())
    assert cal.floor_ratio == pytest.approx(0.5, abs=0.04)
    assert (cal.floor_shape_weight, cal.floor_shape_narrow) == (1.0, 1.0)
    assert "relative to the ratio floor" in cal.floor_shape_source


def test_a_mixture_relative_to_the_ratio_floor_is_still_found() -> None:
    """Some people far off and most close, each relative to their own std: the shape is real and kept."""
    rng = np.random.default_rng(3)
    subjects, per = 4000, 6
    s = np.repeat(rng.uniform(1.0, 6.0, subjects), per)
    scale = np.where(rng.random(subjects) < 0.6, 0.4, math.sqrt((1 - 0.6 * 0.4**2) / 0.4))
    u = np.repeat(rng.normal(0.0, 1.0, subjects) * scale, per)
    errors = s * (math.sqrt(0.5) * u + math.sqrt(0.5) * rng.normal(0.0, 1.0, subjects * per))
    cal = fit_calibration(errors, s, np.repeat(np.arange(subjects), per).tolist())
    assert cal.floor_shape_weight == pytest.approx(0.6, abs=0.1)
    assert cal.floor_shape_narrow == pytest.approx(0.4, abs=0.1)
