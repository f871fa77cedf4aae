"""Several seeds: `agegate train --seeds`, `agegate eval --model NAME=C1,C2`, and the spread summary."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from model import train as train_mod
from model.checkpoint import read_meta
from model.data.synthetic import generate_dataset
from model.evaluation.seeds import format_seed_summary, seed_summary, spread
from stream.tools.evaluate import parse_model_specs


def test_parse_seeds_and_one_run_folder_per_seed() -> None:
    assert train_mod.parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("0,0", "a", ""):
        with pytest.raises(ValueError, match="--seeds"):
            train_mod.parse_seeds(bad)
    runs = train_mod.seed_runs(train_mod.TrainSettings(data="m.csv", out="runs/reg", version="v1"), [3, 4])
    assert [(r.seed, r.out, r.version) for r in runs] == [
        (3, str(Path("runs/reg/seed-3")), "v1-s3"),
        (4, str(Path("runs/reg/seed-4")), "v1-s4"),
    ]


def test_model_specs_group_seeds_under_a_name() -> None:
    specs = parse_model_specs(["reg=a.st,b.st", "bucket=c.st", "reg=d.st", "runs/x=y/best.st", "e.st"], ["named"])
    assert specs == [
        ("reg", ["a.st", "b.st", "d.st"]),
        ("bucket", ["c.st"]),
        ("named", ["runs/x=y/best.st"]),
        (None, ["e.st"]),
    ]


def test_spread_and_summary() -> None:
    s = spread([0.1, 0.3])
    assert s["mean"] == pytest.approx(0.2)
    assert s["std"] == pytest.approx(0.1414, abs=1e-4)
    assert (s["min"], s["max"], s["n"]) == (0.1, 0.3, 2)
    assert spread([0.5])["std"] is None
    entries = [
        {
            "name": "m@s0",
            "subject_level": {"headline": {"mae": {"value": 3.0}}},
            "operating": {"challenge_age_for_fpr": {"0.01": {"value": 25.0}}},
        },
        {
            "name": "m@s1",
            "subject_level": {"headline": {"mae": {"value": 4.0}}},
            "operating": {"challenge_age_for_fpr": {"0.01": {"value": 27.0}}},
        },
    ]
    rows = seed_summary({"m": entries})
    assert rows[0]["entries"] == ["m@s0", "m@s1"]
    assert rows[0]["metrics"]["mae"]["mean"] == pytest.approx(3.5)
    assert rows[0]["metrics"]["challenge_age_for_1pct_fpr_14_17"]["mean"] == pytest.approx(26.0)  # key with a dot
    assert rows[0]["metrics"]["challenge_25_fpr_14_17"]["n"] == 0
    assert "3.500 ± 0.707" in format_seed_summary(rows)


def test_train_seeds_writes_one_checkpoint_per_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = generate_dataset(tmp_path / "data", images=240, seed=1, size=32)
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(manifest),
            "--out",
            str(tmp_path / "runs"),
            "--input-size",
            "32",
            "--width",
            "4",
            "--depth",
            "1",
            "--batch-size",
            "32",
            "--warmup-steps",
            "2",
            "--epochs",
            "1",
            "--version",
            "t",
            "--seeds",
            "0,1",
            "--workers",
            "1",
        ]
    )
    assert train_mod.run(args) == 0
    for seed in (0, 1):
        meta = read_meta(tmp_path / "runs" / f"seed-{seed}" / "best.safetensors")
        assert meta.extra["settings"]["seed"] == seed
        assert meta.config.version == f"t-s{seed}"
    assert "--model NAME=" in capsys.readouterr().out


def test_eval_reports_spread_across_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.data.manifest import ManifestRow, write_manifest
    from model.evaluation.report import load_metrics_json
    from stream.cli import main
    from stream.tools import evaluate
    from tests.unit.test_eval_report import FakeEngine

    rows = []
    (tmp_path / "img").mkdir()
    for i in range(240):
        age = 8 + (i * 7919 % 3200) / 100
        (tmp_path / f"img/{i}.txt").write_bytes(str(age).encode())
        rows.append(ManifestRow(f"img/{i}.txt", age, f"s{i // 2}", "test", {"sex": "FM"[i % 2]}))
    data = write_manifest(tmp_path / "manifest.csv", rows)
    engines = {"a0": FakeEngine(1.0), "a1": FakeEngine(2.0), "b0": FakeEngine(1.0), "b1": FakeEngine(2.0)}
    monkeypatch.setattr(evaluate, "_load_engine", lambda ckpt, device, threads: engines[ckpt])
    code = main(
        [
            "eval",
            "--bootstrap",
            "40",
            "--min-cell-size",
            "10",
            "--model",
            "ref=a0,a1",
            "--model",
            "cand=b0,b1",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "out"),
            "--gate",
        ]
    )
    assert code == 0  # seed k of cand is paired with seed k of ref: identical models pass
    doc = load_metrics_json(tmp_path / "out" / "metrics.json")
    assert [m["name"] for m in doc["models"]] == ["ref@#1", "ref@#2", "cand@#1", "cand@#2"]
    ref = doc["seed_summary"][0]
    assert ref["model"] == "ref"
    assert ref["metrics"]["mae"]["mean"] == pytest.approx(1.5)
    assert ref["metrics"]["mae"]["std"] == pytest.approx(0.7071, abs=1e-3)
    assert [(r["reference"], r["candidate"]) for r in doc["gate"]["results"]] == [
        ("ref@#1", "cand@#1"),
        ("ref@#2", "cand@#2"),
    ]
    assert "across seeds" in capsys.readouterr().out
    html = (tmp_path / "out" / "report.html").read_text()
    for section in ("Across seeds", "Matched operating points", "subject-level 95% intervals", "Per single year"):
        assert section in html
