"""metrics.json / report.html, and `agegate eval` end to end with a stand-in engine."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from model.data.manifest import ManifestRow, load_manifest, write_manifest
from model.engine import EncodedFrame, FrameError, FrameEstimate
from model.evaluation.metrics import Estimates
from model.evaluation.report import (
    DatasetMismatchError,
    build_metrics,
    load_metrics_json,
    model_metrics,
    render_html,
    require_same_dataset,
    write_metrics_json,
)
from model.uncertainty import UncertaintyCalibration
from stream.cli import main
from stream.tools import evaluate


class FakeEngine:
    """Reads the true age written in each 'image' and adds a fixed error: a model with known MAE."""

    def __init__(self, shift: float, minors_shift: float = 0.0) -> None:
        self.shift, self.minors_shift = shift, minors_shift
        self.model_version = f"fake@{shift}/{minors_shift}"
        self.uncertainty = UncertaintyCalibration(floor_years=1.0, floor_source="test")

    def score(self, frames: Sequence[EncodedFrame]) -> list[FrameEstimate | FrameError]:
        out: list[FrameEstimate | FrameError] = []
        for f in frames:
            if f.data == b"bad":
                out.append(FrameError("corrupt", "test"))
                continue
            age = float(f.data)
            extra = self.minors_shift if age < 18 else 0.0
            out.append(FrameEstimate(mean=age + self.shift + extra, std=2.0))
        return out


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        age = float(round(rng.uniform(8, 40), 2))
        path = f"img/{i}.txt"
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / path).write_bytes(b"bad" if i == 0 else str(age).encode())
        rows.append(ManifestRow(path, age, f"s{i // 2}", "test", {"sex": "FM"[i % 2], "tone": "abc"[i % 3]}))
    return write_manifest(tmp_path / "manifest.csv", rows)


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = {"good": FakeEngine(1.0), "same": FakeEngine(1.0), "worse": FakeEngine(1.0, minors_shift=4.0)}
    monkeypatch.setattr(evaluate, "_load_engine", lambda ckpt, device, threads: specs[ckpt])


def _eval(*args: str) -> int:
    return main(["eval", "--bootstrap", "40", "--min-cell-size", "10", *args])


@pytest.mark.usefixtures("engines")
def test_eval_writes_metrics_and_report(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _eval("--model", "good", "--data", str(dataset), "--out", str(out), "--policy", "default") == 0
    doc = load_metrics_json(out / "metrics.json")
    m = doc["models"][0]
    assert m["n_scored"] == 299
    assert m["n_errors"] == 1
    assert m["accuracy"]["overall"]["mae"] == pytest.approx(1.0)
    assert m["accuracy"]["overall"]["mean_signed_error"] == pytest.approx(1.0)
    assert m["accuracy"]["overall"]["cs_1"] == pytest.approx(1.0)
    assert doc["dataset"]["content_hash"] == load_manifest(dataset).content_hash
    assert set(m["fairness"]) == {"sex", "tone"}
    replay = m["policy_replay"]
    assert replay["surface"] == "adult_content"
    assert replay["users"] == 150
    assert replay["by_age_band"]["0-12"]["rates"]["ALLOW"] == 0.0  # nobody under 13 is allowed 18+
    # Belief coverage by images fused: 150 people of 2 images, one of them unreadable.
    coverage = replay["belief_coverage"]
    assert [coverage["by_fused_count"][n]["subjects"] for n in ("1", "2", "4")] == [150, 149, 0]
    assert coverage["floor_years"] == 1.0
    honest = replay["p_at_least_threshold"]
    assert honest["threshold"] == 18.0
    assert sum(b["n"] for b in honest["reliability"]) == 150  # every user's decision, binned by what it stated
    by_count = replay["by_images_fused"]
    assert by_count["1"]["users"] == 150
    assert by_count["4"]["users"] == 0  # nobody has 4 images
    assert sum(by_count["1"][g]["n"] for g in ("under", "near", "above")) == 150
    assert by_count["1"]["under"]["allowed"] == 0  # the children of this set are never ALLOWed 18+
    html = (out / "report.html").read_text()
    assert "Belief interval coverage" in html
    assert "2 fused" in html
    assert "4 fused" not in html  # a count nobody has enough images for is left out
    assert "honest?" in html
    assert "Decisions as images accumulate" in html
    assert html.count("data:image/png;base64,") >= 4
    assert "src='http" not in html
    assert "<script" not in html


@pytest.mark.usefixtures("engines")
def test_gate_passes_identical_and_fails_worse(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _eval("--model", "good", "--model", "same", "--data", str(dataset), "--out", str(tmp_path / "a"), "--gate") == 0
    )
    assert load_metrics_json(tmp_path / "a" / "metrics.json")["gate"]["passed"] is True
    code = _eval("--model", "good", "--model", "worse", "--data", str(dataset), "--out", str(tmp_path / "b"), "--gate")
    assert code == evaluate.EXIT_GATE_FAILED
    err = capsys.readouterr().err
    assert "VIOLATED [under-18 pass rate at 18+3 may not rise by more than 1 point]" in err
    gate = load_metrics_json(tmp_path / "b" / "metrics.json")["gate"]
    assert gate["passed"] is False
    assert gate["results"][0]["candidate"] == "fake@1.0/4.0"


@pytest.mark.usefixtures("engines")
def test_baseline_must_be_on_the_same_data(dataset: Path, tmp_path: Path) -> None:
    assert _eval("--model", "good", "--data", str(dataset), "--out", str(tmp_path / "base")) == 0
    baseline = str(tmp_path / "base" / "metrics.json")
    assert (
        _eval(
            "--model", "worse", "--data", str(dataset), "--out", str(tmp_path / "c"), "--baseline", baseline, "--gate"
        )
        == evaluate.EXIT_GATE_FAILED
    )
    assert (
        _eval("--model", "same", "--data", str(dataset), "--out", str(tmp_path / "d"), "--baseline", baseline, "--gate")
        == 0
    )
    other = load_manifest(dataset)
    write_manifest(tmp_path / "other.csv", [*other.rows[:-1]])
    for p in other.rows[:-1]:
        (tmp_path / p.path).parent.mkdir(exist_ok=True)
    assert (
        _eval(
            "--model",
            "same",
            "--data",
            str(tmp_path / "other.csv"),
            "--out",
            str(tmp_path / "e"),
            "--baseline",
            baseline,
        )
        == evaluate.EXIT_BAD_INPUT
    )
    assert (
        _eval("--model", "same", "--data", str(dataset), "--out", str(tmp_path / "f"), "--expect-hash", "sha256:0")
        == evaluate.EXIT_BAD_INPUT
    )


def test_json_has_no_nan_and_html_renders_empty_cells(tmp_path: Path) -> None:
    est = Estimates.build([10.0, 30.0], [12.0, 29.0], [1.0, 1.0], {"sex": ["F", "M"]})
    entry = model_metrics(est, name="tiny", n_boot=10, min_cell_size=5)
    assert entry["fairness"]["sex"]["mae"]["groups"]["F"]["status"] == "insufficient"
    doc = build_metrics([entry], dataset={"content_hash": "h", "split": "test"}, config={})
    path = write_metrics_json(doc, tmp_path / "m.json")
    raw = json.loads(path.read_text())  # strict JSON: would fail on NaN
    assert raw["models"][0]["accuracy"]["by_age_band"]["13-15"]["mae"] is None
    assert raw["headline"][0]["mae"] == pytest.approx(1.5)
    assert raw["headline"][0]["largest_mae_gap"] is None  # every group insufficient
    assert "tiny" in render_html(raw)


def test_dataset_mismatch_and_schema_version(tmp_path: Path) -> None:
    with pytest.raises(DatasetMismatchError, match="different data"):
        require_same_dataset("sha256:a", "sha256:b")
    require_same_dataset("sha256:a", "sha256:a")
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match="schema"):
        load_metrics_json(p)


def test_headline_reads_thresholds(tmp_path: Path) -> None:
    t = np.array([16.0, 17.0, 19.0, 20.0, 30.0])
    est = Estimates.build(t, [18.5, 21.5, 18.2, 26.0, 31.0], [1.0] * 5)
    h = build_metrics([model_metrics(est, name="x", n_boot=5)], dataset={}, config={})["headline"][0]
    assert h["under_18_pass_rate_at_18"] == 1.0
    assert h["under_18_pass_rate_at_21"] == 0.5
    assert h["under_18_pass_rate_at_25"] == 0.0
    assert h["false_rejection_18_20_at_21"] == 0.5
    assert h["false_rejection_18_20_at_25"] == 0.5
    assert not math.isnan(h["fallback_rate_at_18"])


def test_benchmark_is_all_test_and_records_its_hash(tmp_path: Path) -> None:
    from model.evaluation.datasets import build_benchmark

    record = build_benchmark(tmp_path / "bench", images=8, seed=5)
    manifest = load_manifest(tmp_path / "bench" / record["manifest"])
    assert {r.split for r in manifest.rows} == {"test"}
    assert record["images"] == 8
    assert record["content_hash"] == manifest.content_hash
    assert json.loads((tmp_path / "bench" / "benchmark.json").read_text())["seed"] == 5


@pytest.mark.usefixtures("engines")
def test_baseline_gate_pairs_with_the_baselines_predictions(dataset: Path, tmp_path: Path) -> None:
    assert _eval("--model", "good", "--data", str(dataset), "--out", str(tmp_path / "base")) == 0
    preds = tmp_path / "base" / "predictions.csv"
    from model.evaluation.predictions import read_predictions

    rows = load_manifest(dataset).split("test")
    name, est = read_predictions(preds, rows)
    assert name == "fake@1.0/0.0"
    assert len(est) == 299  # the corrupt frame was never scored
    assert est.mean - est.true_age == pytest.approx(np.ones(299))
    assert est.subject_id is not None
    preds.unlink()
    assert (
        _eval(
            "--model",
            "same",
            "--data",
            str(dataset),
            "--out",
            str(tmp_path / "g"),
            "--baseline",
            str(tmp_path / "base" / "metrics.json"),
            "--gate",
        )
        == evaluate.EXIT_BAD_INPUT
    )
