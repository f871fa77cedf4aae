"""The error floor by predicted age: the table recovers a known band structure, rides in checkpoint
metadata, is absent (the scalar floor everywhere) for old calibrations and checkpoints, and `decide`
judges a belief with it when given one (never below the stored floor unless told otherwise)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import save_checkpoint
from model.engine import InferenceEngine
from model.models import create_model
from model.uncertainty import (
    MIN_ERROR_FLOOR_YEARS,
    FloorTable,
    UncertaintyCalibration,
    fit_calibration,
    fit_floor_table,
)
from stream.core.belief import YEAR_S, Belief, Evidence, FloorByAge, event_evidence, fuse
from stream.core.policy import Action, PolicyEvent, decide, load_policy


def _true_floor(predicted: float) -> float:
    """The simulated person-level error sd by predicted age: small for children, large at 20-35."""
    return 1.0 if predicted < 18 else (4.0 if predicted < 35 else 2.0)


def _simulate(rng: np.random.Generator, subjects: int, within: float = 1.5) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Errors, subject ids and predicted ages: each subject's predicted age is uniform in 8-60, a
    persistent error N(0, _true_floor(predicted)^2) plus per-image noise N(0, within^2), 2-8 images."""
    errors: list[float] = []
    ids: list[str] = []
    predicted: list[float] = []
    for i in range(subjects):
        k = int(rng.integers(2, 9))
        centre = float(rng.uniform(8, 60))
        offset = rng.normal(0, _true_floor(centre))
        errors.extend(offset + rng.normal(0, within, k))
        predicted.extend(centre + rng.normal(0, 0.2, k))
        ids.extend([f"s{i}"] * k)
    return np.asarray(errors), ids, np.asarray(predicted)


def test_floor_table_recovers_a_known_band_structure() -> None:
    errors, ids, predicted = _simulate(np.random.default_rng(3), 6000)
    table = fit_floor_table(errors, ids, predicted)
    assert table.source == "estimated"
    assert len(table.knots) == 12  # 6000 subjects / 100 per band, capped at 12 bands
    assert sum(table.subjects) == 6000
    assert all(b > a for a, b in zip(table.knots, table.knots[1:], strict=False))
    # Away from the steps (a band straddling one mixes both sds), each band recovers its sd.
    for knot, value in zip(table.knots, table.values, strict=True):
        if abs(knot - 18) > 3 and abs(knot - 35) > 3:
            assert value == pytest.approx(_true_floor(knot), rel=0.2), (knot, value)
    assert table.at(12.0) < 1.5 < 3.0 < table.at(27.0)
    assert table.at(-5.0) == table.values[0]  # clamped, no extrapolation
    assert table.at(99.0) == table.values[-1]


def test_too_few_subjects_give_no_table() -> None:
    errors, ids, predicted = _simulate(np.random.default_rng(4), 150)
    table = fit_floor_table(errors, ids, predicted)
    assert not table
    assert table.source.startswith("default:")
    # One image per subject: nothing to estimate a persistent error from, whatever the count.
    single = fit_floor_table(np.ones(1000), [f"u{i}" for i in range(1000)], np.linspace(10, 60, 1000))
    assert not single


def test_band_floors_are_never_zero() -> None:
    rng = np.random.default_rng(5)
    errors = rng.normal(0, 1.0, 4000)  # no persistent error at all: the estimate can come out <= 0
    ids = [f"s{i // 4}" for i in range(4000)]
    table = fit_floor_table(errors, ids, rng.uniform(10, 60, 4000))
    assert table
    assert min(table.values) >= MIN_ERROR_FLOOR_YEARS


def test_fit_calibration_fits_the_table_only_given_predicted_ages() -> None:
    errors, ids, predicted = _simulate(np.random.default_rng(6), 1200)
    stds = np.full(errors.size, 3.0)
    assert not fit_calibration(errors, stds, ids).floor_table
    cal = fit_calibration(errors, stds, ids, predicted=predicted)
    assert cal.floor_table.source == "estimated"
    assert cal.floor_at(12.0) < cal.floor_years < cal.floor_at(27.0)
    # With the mean map the table is fitted on the mapped ages: same table when the map is the identity
    # up to noise (here the errors carry no bias by age), and still a table.
    mapped = fit_calibration(errors, stds, ids, means=predicted)
    assert mapped.floor_table
    assert len(mapped.floor_table_knots) == len(cal.floor_table_knots)


CAL = UncertaintyCalibration(
    std_scale=0.8,
    floor_years=3.1,
    floor_subjects=900,
    floor_source="estimated",
    fitted_on=7200,
    floor_table_knots=(12.0, 21.5, 40.0),
    floor_table_values=(1.8, 3.6, 2.9),
    floor_table_subjects=(300, 300, 300),
    floor_table_source="estimated",
)


def test_floor_table_round_trips_through_checkpoint_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("age_regressor", input_size=32, width=4, depth=1, version="t")
    path = save_checkpoint(tmp_path / "t.safetensors", model, extra={"uncertainty": CAL.to_dict()})
    engine = InferenceEngine.from_checkpoint(path, device="cpu")
    assert engine.uncertainty == CAL
    assert engine.uncertainty.floor_table == FloorTable(
        (12.0, 21.5, 40.0), (1.8, 3.6, 2.9), (300, 300, 300), "estimated"
    )
    assert engine.uncertainty.floor_at(16.75) == pytest.approx(2.7)  # halfway between the first two knots


def test_a_calibration_from_before_tables_has_the_scalar_floor_everywhere() -> None:
    old = {k: v for k, v in CAL.to_dict().items() if k != "floor_table"}
    cal = UncertaintyCalibration.from_dict(old)
    assert not cal.floor_table
    assert "not recorded" in cal.floor_table_source
    assert all(cal.floor_at(a) == 3.1 for a in (5.0, 17.0, 24.0, 70.0))


def test_an_old_checkpoint_loads_without_a_table(tmp_path: Path) -> None:
    model = create_model("age_regressor", input_size=32, width=4, depth=1, version="o")
    engine = InferenceEngine.from_checkpoint(save_checkpoint(tmp_path / "o.safetensors", model), device="cpu")
    assert not engine.uncertainty.floor_table
    assert engine.uncertainty.floor_at(20.0) == engine.error_floor_years


@pytest.mark.parametrize(
    ("knots", "values", "subjects"),
    [
        ((10.0,), (2.0,), (100,)),
        ((10.0, 10.0), (2.0, 3.0), (100, 100)),
        ((10.0, 20.0), (2.0, 0.0), (100, 100)),
        ((10.0, 20.0), (2.0,), (100,)),
        ((10.0, math.nan), (2.0, 3.0), (100, 100)),
    ],
)
def test_invalid_tables_are_refused(
    knots: tuple[float, ...], values: tuple[float, ...], subjects: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match="floor table"):
        replace(CAL, floor_table_knots=knots, floor_table_values=values, floor_table_subjects=subjects)


# --- judging a belief with the table -------------------------------------------------------------

T0 = 1.79e9
POLICY = load_policy(None)


def _belief(age: float, uploads: int, floor: float = 3.0) -> Belief:
    """A belief fused the way the worker fuses: one 2-frame event a day, frames at `age`, std 4."""
    belief: Belief | None = None
    for k in range(uploads):
        t = T0 + k * 86400.0
        ev = event_evidence(f"e{k}", t, [(age + k / 365.25, 4.0)] * 2, floor)
        assert isinstance(ev, Evidence)
        belief = fuse(belief, [ev], now=t, half_life_s=POLICY.half_life_s, model_version="m", floor=floor).belief
    assert belief is not None
    return belief


def _decide(belief: Belief, by_age: FloorByAge | None) -> tuple[Action, float]:
    t = belief.updated_at
    d = decide(belief, PolicyEvent("DEFAULT", "adult_content", t), POLICY, now=t, floor_by_age=by_age)
    assert d.evidence.p_at_least_threshold_plus_buffer is not None
    return d.action, d.evidence.p_at_least_threshold_plus_buffer


def test_decide_judges_with_the_banded_floor() -> None:
    belief = _belief(26.0, 40)
    allowed, p_scalar = _decide(belief, None)
    assert allowed is Action.ALLOW  # the scalar floor (3.0) is convinced at a fused mean of 26
    wide = FloorByAge((15.0, 26.0, 40.0), (1.5, 5.0, 3.0))  # the model is far off for people it puts at ~26
    action, p_banded = _decide(belief, wide)
    assert action is not Action.ALLOW
    assert p_banded < p_scalar
    d = decide(belief, PolicyEvent("DEFAULT", "adult_content", belief.updated_at), POLICY, floor_by_age=wide)
    ivar = belief.independent_var_at(belief.updated_at, POLICY.half_life_s)
    assert d.evidence.age_mean is not None
    banded = wide.at(d.evidence.age_mean)
    assert banded > 4.9  # the mean is 26.1: the table's floor there, not the stored 3.0
    assert d.evidence.age_std == pytest.approx(math.sqrt(ivar + banded**2))  # the reported std is the judged one


def test_the_table_alone_may_narrow_but_by_default_never_below_the_stored_floor() -> None:
    belief = _belief(24.0, 40)
    assert _decide(belief, None)[0] is not Action.ALLOW  # 24 with a 3-year floor: not enough for 18 + buffer
    narrow = (15.0, 24.0, 40.0), (1.0, 1.2, 1.0)
    conservative, p_cons = _decide(belief, FloorByAge(*narrow))
    assert conservative is not Action.ALLOW
    assert p_cons == pytest.approx(_decide(belief, None)[1])  # max(table, stored) = stored here
    alone, _ = _decide(belief, FloorByAge(*narrow, at_least_stored=False))
    assert alone is Action.ALLOW  # the table alone, 1.2 years at 24, is convinced


@pytest.mark.parametrize("uploads", [1, 5, 40, 400])
def test_the_judged_std_never_falls_below_the_floor_in_effect(uploads: int) -> None:
    belief = _belief(20.0, uploads)
    for by_age in (None, FloorByAge((10.0, 20.0, 30.0), (2.0, 4.5, 3.0)), FloorByAge((10.0, 30.0), (0.5, 0.5))):
        d = decide(belief, PolicyEvent("DEFAULT", "adult_content", belief.updated_at), POLICY, floor_by_age=by_age)
        assert d.evidence.age_std is not None
        assert d.evidence.age_mean is not None
        in_effect = belief.floor if by_age is None else by_age.floor(d.evidence.age_mean, belief.floor)
        assert in_effect >= belief.floor
        assert d.evidence.age_std >= in_effect


def test_a_verified_belief_ignores_the_table() -> None:
    verified = Belief(T0 - 17.0 * YEAR_S, 1e4, T0, 1, True, "", 0.0)
    d = decide(
        verified, PolicyEvent("DEFAULT", "adult_content", T0), POLICY, floor_by_age=FloorByAge((10.0, 30.0), (9.0, 9.0))
    )
    assert d.evidence.age_std == pytest.approx(0.01)
    assert d.action is not Action.ALLOW
