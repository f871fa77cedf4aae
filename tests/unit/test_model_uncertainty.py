"""Uncertainty calibration: the scale and floor estimators recover known truths, the calibration
rides in checkpoint metadata, old checkpoints still load, and the engine applies the scale."""

from __future__ import annotations

import logging
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint, read_meta, save_checkpoint, update_extra
from model.engine import EncodedFrame, FrameEstimate, InferenceEngine
from model.models import AgeModel, create_model
from model.testing import synthetic_face_jpeg
from model.uncertainty import (
    DEFAULT_ERROR_FLOOR_YEARS,
    MIN_ERROR_FLOOR_YEARS,
    UncertaintyCalibration,
    estimate_error_floor,
    fit_calibration,
    fit_floor_shape,
    fit_mean_map,
    fit_std_scale,
)


def _simulate(
    rng: np.random.Generator, subjects: int, between: float, within: float, bias: float = 0.0
) -> tuple[np.ndarray, list[str]]:
    """Errors of subjects with a persistent offset N(bias, between) plus per-image noise N(0, within),
    2 to 6 images each (unequal group sizes exercise the mean(1/k) term)."""
    errors: list[float] = []
    ids: list[str] = []
    for i in range(subjects):
        k = int(rng.integers(2, 7))
        offset = rng.normal(bias, between)
        errors.extend(offset + rng.normal(0, within, k))
        ids.extend([f"s{i}"] * k)
    return np.asarray(errors), ids


@pytest.mark.parametrize("true_scale", [0.6, 1.0, 1.7])
def test_std_scale_recovers_a_known_scale(true_scale: float) -> None:
    rng = np.random.default_rng(1)
    stds = rng.uniform(0.5, 6.0, 20_000)  # heteroscedastic: the scale is relative to each frame's std
    errors = rng.normal(0, true_scale * stds)
    assert fit_std_scale(errors, stds) == pytest.approx(true_scale, rel=0.02)


def test_std_scale_without_data_is_one() -> None:
    assert fit_std_scale([], []) == 1.0
    assert fit_std_scale([np.nan], [1.0]) == 1.0


@pytest.mark.parametrize(("between", "within"), [(2.0, 1.0), (1.0, 2.0), (3.0, 0.5), (0.7, 1.5)])
def test_floor_recovers_a_known_between_subject_sd(between: float, within: float) -> None:
    errors, ids = _simulate(np.random.default_rng(int(between * 10 + within)), 4000, between, within)
    est = estimate_error_floor(errors, ids)
    assert est.source == "estimated"
    assert est.subjects == 4000
    assert est.floor_years == pytest.approx(between, rel=0.08)
    assert est.within_sd == pytest.approx(within, rel=0.05)
    # The naive per-frame sd mixes both parts and would overstate the floor whenever within > 0.
    assert float(np.std(errors)) > est.floor_years


def test_a_systematic_bias_counts_as_persistent_error() -> None:
    errors, ids = _simulate(np.random.default_rng(7), 4000, 1.5, 1.0, bias=2.0)
    assert estimate_error_floor(errors, ids).floor_years == pytest.approx(2.5, rel=0.08)  # sqrt(1.5^2 + 2^2)


def test_without_multi_image_subjects_the_default_floor_is_used(caplog: pytest.LogCaptureFixture) -> None:
    errors = np.random.default_rng(0).normal(0, 3, 500)
    with caplog.at_level(logging.WARNING, logger="model.uncertainty"):
        est = estimate_error_floor(errors, [f"img{i}" for i in range(500)])  # each image its own subject
    assert est.floor_years == DEFAULT_ERROR_FLOOR_YEARS
    assert est.subjects == 0
    assert est.source == "default: no subject with several images"
    assert "cannot be estimated" in caplog.text


def test_too_few_multi_image_subjects_use_the_default() -> None:
    errors, ids = _simulate(np.random.default_rng(3), 5, 2.0, 1.0)
    est = estimate_error_floor(errors, ids)
    assert est.floor_years == DEFAULT_ERROR_FLOOR_YEARS
    assert est.source.startswith("default: only 5 subjects")


@pytest.mark.parametrize("within", [0.0, 1.0, 3.0])
def test_the_floor_is_never_zero(within: float) -> None:
    # No persistent part at all: the moment estimate is ~0 or negative by noise; it must stay positive.
    errors, ids = _simulate(np.random.default_rng(5), 300, 0.0, within)
    est = estimate_error_floor(errors, ids)
    assert est.floor_years >= MIN_ERROR_FLOOR_YEARS > 0
    with pytest.raises(ValueError, match="floor_years"):
        UncertaintyCalibration(floor_years=0.0)


def test_fit_calibration_combines_scale_and_floor() -> None:
    rng = np.random.default_rng(11)
    errors, ids = _simulate(rng, 2000, 2.0, 1.0)
    stds = np.full(errors.size, 4.0)  # too wide: the true sd is sqrt(5) ~ 2.24
    cal = fit_calibration(errors, stds, ids)
    assert cal.std_scale == pytest.approx(np.sqrt(5) / 4.0, rel=0.05)
    assert cal.floor_years == pytest.approx(2.0, rel=0.1)
    assert cal.floor_subjects == 2000
    assert cal.fitted_on == errors.size
    assert cal.apply(4.0) == pytest.approx(4.0 * cal.std_scale)
    assert torch.allclose(cal.apply(torch.tensor([2.0, 4.0])), torch.tensor([2.0, 4.0]) * cal.std_scale)


def _model() -> AgeModel:
    torch.manual_seed(0)
    return create_model("age_regressor", input_size=32, width=4, depth=1, version="u")


CAL = UncertaintyCalibration(
    std_scale=0.5,
    floor_years=2.2,
    floor_subjects=123,
    floor_source="estimated",
    fitted_on=400,
    mean_knots_pred=(5.0, 20.0, 60.0),
    mean_knots_true=(8.0, 19.0, 70.0),
    floor_shape_weight=0.4,
    floor_shape_narrow=0.5,
    floor_shape_subjects=321,
    floor_shape_source="fitted",
)


def test_calibration_round_trips_through_checkpoint_metadata(tmp_path: Path) -> None:
    direct = save_checkpoint(tmp_path / "a.safetensors", _model(), extra={"uncertainty": CAL.to_dict()})
    assert UncertaintyCalibration.from_meta(read_meta(direct)) == CAL
    assert UncertaintyCalibration.from_meta(load_checkpoint(direct).meta) == CAL
    # Attached after the fact (what train() does to the promoted checkpoint): other metadata and the
    # weights hash survive, so the file still loads with verification.
    later = save_checkpoint(tmp_path / "b.safetensors", _model(), dataset_hash="sha256:d", extra={"epoch": 3})
    update_extra(later, {"uncertainty": CAL.to_dict()})
    loaded = load_checkpoint(later)
    assert UncertaintyCalibration.from_meta(loaded.meta) == CAL
    assert loaded.meta.extra["epoch"] == 3
    assert loaded.meta.dataset_hash == "sha256:d"
    assert UncertaintyCalibration.from_dict(CAL.to_dict()) == CAL


def test_calibration_fitted_before_mean_maps_and_shapes_loads_as_identity_and_gaussian() -> None:
    old = {k: v for k, v in CAL.to_dict().items() if k not in ("mean_knots_pred", "mean_knots_true", "floor_shape")}
    cal = UncertaintyCalibration.from_dict(old)
    assert not cal.has_mean_map
    assert cal.apply_mean(17.5) == 17.5
    assert (cal.floor_shape_weight, cal.floor_shape_narrow, cal.floor_shape_wide) == (1.0, 1.0, 1.0)
    assert cal.floor_years == 2.2


def test_an_old_checkpoint_loads_with_a_warning_scale_one_and_the_default_floor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = save_checkpoint(tmp_path / "old.safetensors", _model())  # no "uncertainty" in extra
    with caplog.at_level(logging.WARNING, logger="model.uncertainty"):
        engine = InferenceEngine.from_checkpoint(path, device="cpu")
    assert "no uncertainty calibration" in caplog.text
    assert engine.uncertainty.std_scale == 1.0
    assert engine.uncertainty.floor_years == DEFAULT_ERROR_FLOOR_YEARS
    assert engine.error_floor_years == DEFAULT_ERROR_FLOOR_YEARS
    assert engine.uncertainty.floor_source.startswith("default:")


def test_engine_without_meta_uses_the_default() -> None:
    engine = InferenceEngine(_model(), device="cpu")
    assert engine.uncertainty.std_scale == 1.0
    assert engine.error_floor_years == DEFAULT_ERROR_FLOOR_YEARS


def test_engine_applies_the_scale_to_every_frame_std(tmp_path: Path) -> None:
    plain = save_checkpoint(tmp_path / "plain.safetensors", _model())
    calibrated = save_checkpoint(tmp_path / "cal.safetensors", _model(), extra={"uncertainty": CAL.to_dict()})
    frames = [EncodedFrame(synthetic_face_jpeg(age, seed=i), "image/jpeg") for i, age in enumerate((9, 16, 25, 44))]
    raw_engine = InferenceEngine.from_checkpoint(plain, device="cpu")
    cal_engine = InferenceEngine.from_checkpoint(calibrated, device="cpu")
    assert cal_engine.error_floor_years == 2.2
    raw, cal = raw_engine.score(frames), cal_engine.score(frames)
    for r, c in zip(raw, cal, strict=True):
        assert isinstance(r, FrameEstimate)
        assert isinstance(c, FrameEstimate)
        assert c.mean == pytest.approx(float(np.interp(r.mean, CAL.mean_knots_pred, CAL.mean_knots_true)), abs=1e-4)
        assert c.std == pytest.approx(0.5 * r.std, rel=1e-6)
    # The batch step alone (used by replay) is calibrated too.
    pixels = cal_engine.decode(frames).pixels
    assert torch.allclose(cal_engine.infer(pixels).std, 0.5 * raw_engine.infer(pixels).std)
    assert torch.allclose(cal_engine.infer(pixels).mean, CAL.apply_mean(raw_engine.infer(pixels).mean))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_applies_the_scale(tmp_path: Path) -> None:
    plain = save_checkpoint(tmp_path / "plain.safetensors", _model())
    calibrated = save_checkpoint(tmp_path / "cal.safetensors", _model(), extra={"uncertainty": CAL.to_dict()})
    frames = [EncodedFrame(synthetic_face_jpeg(age, seed=i), "image/jpeg") for i, age in enumerate((9, 16, 25))]
    raw = InferenceEngine.from_checkpoint(plain, device="cuda").score(frames)
    cal = InferenceEngine.from_checkpoint(calibrated, device="cuda").score(frames)
    for r, c in zip(raw, cal, strict=True):
        assert isinstance(r, FrameEstimate)
        assert isinstance(c, FrameEstimate)
        assert c.std == pytest.approx(0.5 * r.std, rel=1e-5)
        assert c.mean == pytest.approx(float(np.interp(r.mean, CAL.mean_knots_pred, CAL.mean_knots_true)), abs=1e-3)


# --- the mean map ----------------------------------------------------------------------------------


def test_mean_map_undoes_a_known_monotone_bias() -> None:
    rng = np.random.default_rng(21)
    true = rng.uniform(6, 70, 6000)
    predicted = 20.0 + 0.6 * (true - 20.0) + rng.normal(0, 1.0, true.size)  # pulled toward 20 at both ends
    kp, kt = fit_mean_map(predicted, true)
    assert len(kp) >= 10
    assert all(b > a for a, b in pairwise(kp))
    assert all(b >= a for a, b in pairwise(kt))
    cal = UncertaintyCalibration(mean_knots_pred=kp, mean_knots_true=kt)
    for age in (10.0, 16.0, 30.0, 50.0):
        assert cal.apply_mean(20.0 + 0.6 * (age - 20.0)) == pytest.approx(age, abs=1.0)
    assert cal.apply_mean(-100.0) == kt[0]  # clamped: no extrapolation past the data


def test_fit_calibration_with_means_fits_the_floor_on_what_the_map_leaves() -> None:
    rng = np.random.default_rng(22)
    errors, ids = _simulate(rng, 1500, 1.5, 1.0)
    true = np.repeat(rng.uniform(6, 70, 1500), np.bincount([int(i[1:]) for i in ids]))
    predicted = 20.0 + 0.6 * (true - 20.0) + errors  # a bias by age that is the same in every photo
    plain = fit_calibration(predicted - true, np.full(true.size, 3.0), ids)
    mapped = fit_calibration(predicted - true, np.full(true.size, 3.0), ids, means=predicted)
    assert not plain.has_mean_map
    assert mapped.has_mean_map
    assert plain.floor_years > 5.0  # the age bias counts as persistent error without the map
    assert mapped.floor_years < 2.5  # with it, roughly the subjects' own offset sd (1.5) again


def test_mean_map_needs_enough_frames() -> None:
    assert fit_mean_map(np.arange(50.0), np.arange(50.0)) == ((), ())


def test_mean_knots_are_validated() -> None:
    with pytest.raises(ValueError, match="increasing"):
        UncertaintyCalibration(mean_knots_pred=(5.0, 4.0), mean_knots_true=(1.0, 2.0))
    with pytest.raises(ValueError, match="differ in length"):
        UncertaintyCalibration(mean_knots_pred=(5.0, 6.0), mean_knots_true=(1.0,))


# --- the floor's shape -----------------------------------------------------------------------------


def _simulate_mixture(
    rng: np.random.Generator, subjects: int, floor: float, weight: float, narrow: float, within: float
) -> tuple[np.ndarray, list[str]]:
    wide = np.sqrt((1 - weight * narrow**2) / (1 - weight))
    errors: list[float] = []
    ids: list[str] = []
    for i in range(subjects):
        k = int(rng.integers(4, 9))
        sd = floor * (narrow if rng.random() < weight else wide)
        errors.extend(rng.normal(0, sd) + rng.normal(0, within, k))
        ids.extend([f"s{i}"] * k)
    return np.asarray(errors), ids


def test_floor_shape_fit_recovers_a_known_mixture() -> None:
    errors, ids = _simulate_mixture(np.random.default_rng(8), 4000, 3.0, 0.6, 0.4, 1.5)
    floor = estimate_error_floor(errors, ids)
    fit = fit_floor_shape(errors, ids, floor.floor_years, floor.within_sd)
    assert fit.source == "fitted"
    assert fit.weight == pytest.approx(0.6, abs=0.08)
    assert fit.narrow == pytest.approx(0.4, abs=0.08)
    assert fit.weight * fit.narrow**2 + (1 - fit.weight) * fit.wide**2 == pytest.approx(1.0)
    cal = fit_calibration(errors, np.full(errors.size, 3.0), ids)
    assert (cal.floor_shape_weight, cal.floor_shape_narrow) == (fit.weight, fit.narrow)
    assert cal.floor_shape_subjects == 4000


def test_a_gaussian_floor_stays_gaussian() -> None:
    errors, ids = _simulate(np.random.default_rng(9), 2000, 2.0, 1.0)
    floor = estimate_error_floor(errors, ids)
    fit = fit_floor_shape(errors, ids, floor.floor_years, floor.within_sd)
    assert (fit.weight, fit.narrow, fit.wide) == (1.0, 1.0, 1.0)
    assert fit.source.startswith("gaussian:")


def test_too_few_subjects_for_a_shape_give_the_gaussian() -> None:
    errors, ids = _simulate_mixture(np.random.default_rng(10), 60, 3.0, 0.5, 0.3, 1.0)
    fit = fit_floor_shape(errors, ids, 3.0, 1.0)
    assert fit.weight == 1.0
    assert fit.source.startswith("default:")
