"""Training: the CLI contract, best-k retention, recovery, and resume reproducing a straight run."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import pytest
import torch

from model import train as train_mod
from model.checkpoint import load_checkpoint
from model.data.synthetic import generate_dataset
from model.uncertainty import DEFAULT_ERROR_FLOOR_YEARS, UncertaintyCalibration


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data"), images=400, seed=1, size=32)


def _args(manifest: Path, out: Path, **over: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    argv = [
        "--data",
        str(manifest),
        "--out",
        str(out),
        "--input-size",
        "32",
        "--width",
        "4",
        "--depth",
        "1",
        "--batch-size",
        "32",
        "--warmup-steps",
        "5",
        "--keep",
        "2",
        "--version",
        "t",
    ]
    for key, value in over.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return parser.parse_args(argv)


@pytest.mark.parametrize("model", ["age_regressor", "bucket_classifier"])
def test_train_cli_writes_best_checkpoints_recovery_and_metrics(
    manifest: Path, tmp_path: Path, model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_mod.run(_args(manifest, tmp_path, epochs=3, model=model)) == 0
    assert len(list((tmp_path / "checkpoints").glob("*.safetensors"))) == 2  # --keep 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"mae", "cs5", "t13_error", "t16_error", "t18_error"} <= set(metrics["test"])
    resolved = json.loads((tmp_path / "run_config.json").read_text())
    assert resolved["dataset_hash"].startswith("sha256:")
    assert resolved["config"]["name"] == model
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert best.meta.dataset_hash == resolved["dataset_hash"]
    assert best.config.name == model
    # The promoted checkpoint carries its calibration, fitted on val; this val split has too few
    # multi-image subjects for a floor, so the documented default is used and says why.
    uncertainty = UncertaintyCalibration.from_dict(best.meta.extra["uncertainty"])
    assert uncertainty.std_scale > 0
    assert uncertainty.fitted_on == metrics["uncertainty"]["fitted_on"] > 0
    assert uncertainty.floor_years == DEFAULT_ERROR_FLOOR_YEARS
    assert uncertainty.floor_source.startswith("default: only")
    assert set(metrics["uncertainty"]["test_coverage"]["after"]) == {"p50", "p80", "p90", "p95"}
    printed = capsys.readouterr().out
    assert "test:" in printed
    assert "test frame coverage after  calibration" in printed
    # A second run into the same folder must be an explicit resume.
    assert train_mod.run(_args(manifest, tmp_path, epochs=3, model=model)) == 2


def test_resume_reproduces_an_uninterrupted_run(manifest: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)  # identical kernels in both runs
    train_mod.run(_args(manifest, tmp_path / "straight", epochs=2, threads=1))
    train_mod.run(_args(manifest, tmp_path / "split", epochs=2, stop_after=1, threads=1))  # "interrupted"
    train_mod.run(_args(manifest, tmp_path / "split", epochs=2, threads=1, resume=True))
    a = load_checkpoint(tmp_path / "straight" / "recovery.safetensors").model.state_dict()
    b = load_checkpoint(tmp_path / "split" / "recovery.safetensors").model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_lr_schedule_warms_up_then_decays() -> None:
    lrs = [train_mod.lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] < 0.01


def test_calibration_data_replaces_the_val_split_and_joins_the_lineage(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A separate calibration set: other subjects (another generator seed), several images each.
    cal_manifest = generate_dataset(tmp_path / "cal", images=480, seed=77, size=32, images_per_subject=6)
    out = tmp_path / "run"
    assert train_mod.run(_args(manifest, out, epochs=1, calibration_data=cal_manifest)) == 0
    best = load_checkpoint(out / "best.safetensors")
    uncertainty = UncertaintyCalibration.from_dict(best.meta.extra["uncertainty"])
    assert uncertainty.fitted_on == 480  # every row of the calibration manifest, whatever its split
    assert uncertainty.floor_source == "estimated"  # 80 subjects with 6 images: enough for a floor
    assert uncertainty.floor_subjects == 80
    assert not uncertainty.has_mean_map  # the mean map is opt-in (--mean-map)
    lineage = best.meta.extra["lineage"]
    assert 77 in lineage["generator"]["seeds"]  # eval would refuse this calibration set as a benchmark
    assert lineage["calibration"]["rows"] == 480
    # --calibrate-only refits the promoted checkpoint in place, without training.
    with pytest.raises(SystemExit, match=r"shares \d+ subjects with the training rows"):
        train_mod.run(_args(manifest, out, calibration_data=manifest, calibrate_only=True))
    other = generate_dataset(tmp_path / "cal2", images=240, seed=78, size=32, images_per_subject=4)
    assert train_mod.run(_args(manifest, out, calibration_data=other, calibrate_only=True)) == 0
    again = load_checkpoint(out / "best.safetensors")
    assert UncertaintyCalibration.from_dict(again.meta.extra["uncertainty"]).fitted_on == 240
    assert 78 in again.meta.extra["lineage"]["generator"]["seeds"]
    assert again.meta.weights_sha256 == best.meta.weights_sha256  # only the metadata changed
    assert "recalibrated" in capsys.readouterr().out
