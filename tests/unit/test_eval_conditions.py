"""Held-out capture conditions: degraded copies of the benchmark with quality fields, one manifest per
condition and one combined manifest whose `condition` and quality strata group every metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from model.data.manifest import load_manifest
from model.evaluation.datasets import CONDITIONS, main
from model.evaluation.metrics import Estimates
from model.evaluation.report import model_metrics


def test_conditions_are_built_with_quality_fields(tmp_path: Path) -> None:
    assert main(["build", "--out", str(tmp_path), "--images", "48", "--seed", "1000", "--conditions"]) == 0
    record = json.loads((tmp_path / "benchmark.json").read_text())
    names = {"clean", *CONDITIONS}
    assert set(record["held_out_conditions"]["conditions"]) == names
    for name in names:
        m = load_manifest(tmp_path / "conditions" / name / "manifest.csv")
        assert len(m.rows) == 48
        assert all(m.resolve(r).exists() for r in m.rows)
        assert {r.attributes["condition"] for r in m.rows} == {name}
    combined = load_manifest(tmp_path / "conditions.csv")
    assert len(combined.rows) == 48 * len(names)
    assert {"condition", "sharpness", "luminance"} <= set(combined.attribute_names())
    with (tmp_path / "quality.csv").open() as fh:
        q = list(csv.DictReader(fh))

    def mean(field: str, cond: str) -> float:
        return float(np.mean([float(r[field]) for r in q if f"conditions/{cond}/" in r["path"]]))

    assert mean("q_sharpness", "blur_r1.5") < mean("q_sharpness", "clean")
    assert mean("q_luminance", "dim_0.45") < mean("q_luminance", "clean") < mean("q_luminance", "bright_1.6")
    assert mean("q_side_px", "lowres_20px") == 20
    assert mean("q_jpeg_quality", "jpeg_q15") == 15
    # one evaluation reports every metric per condition (by_group) from the combined manifest
    rows = combined.rows
    est = Estimates.build(
        [r.age for r in rows],
        [r.age + 1 for r in rows],
        [2.0] * len(rows),
        {a: [r.attributes[a] for r in rows] for a in ("condition", "sharpness")},
        subject_id=[r.subject_id for r in rows],
    )
    entry = model_metrics(est, name="m", n_boot=20, min_cell_size=5)
    assert set(entry["by_group"]["condition"]) == names
    assert entry["by_group"]["condition"]["jpeg_q15"]["accuracy"]["mae"] == 1.0
