"""The release gate's required outcomes on small models actually trained (slow: trains three tiny
models once per session, cached per seed, and scores a 1,200-image benchmark twice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model.data.synthetic import Bias
from model.evaluation.datasets import build_benchmark
from model.evaluation.gate import DEFAULT_GATE, GateResult, evaluate_paired_gate, format_result, load_gate
from model.evaluation.metrics import Estimates

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # trains three models on first use

# Rules about the stated uncertainty. Before training calibrated the std (model/uncertainty.py), the
# regression model failed these against the bucket baseline, and only these; now it passes them all.
CALIBRATION = ("coverage_error(", "ece(", "nll(")


def _score(ckpt: Path, manifest: Path) -> Estimates:
    from model.data.manifest import load_manifest
    from model.engine import InferenceEngine
    from model.evaluation.scoring import score_rows

    m = load_manifest(manifest)
    engine: Any = InferenceEngine.from_checkpoint(str(ckpt), device="cpu", threads=1)
    try:
        return score_rows(engine, m, m.split("test"))
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_model_b: Path) -> dict[str, Estimates]:
    from model.testing import train_tiny_checkpoint

    bucket = train_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bucket"), seed=0, model="bucket_classifier")
    root = tmp_path_factory.mktemp("bench")
    # same seed: same subjects and file names, so the biased benchmark pairs row by row with the plain one
    build_benchmark(root / "plain", images=1200, seed=1000)
    build_benchmark(root / "biased", images=1200, seed=1000, bias=Bias("skin_tone", "dark", 5.0))
    plain = root / "plain" / "manifest.csv"
    return {
        "reg0": _score(tiny_model, plain),
        "reg1": _score(tiny_model_b, plain),
        "bucket0": _score(bucket, plain),
        "reg0_biased": _score(tiny_model, root / "biased" / "manifest.csv"),
    }


def _gate(ref: Estimates, cand: Estimates) -> GateResult:
    return evaluate_paired_gate(load_gate(DEFAULT_GATE), ref, cand)


def test_same_architecture_another_seed_passes(scored: dict[str, Estimates]) -> None:
    res = _gate(scored["reg0"], scored["reg1"])
    assert res.passed, format_result(res)


def test_bucket_candidate_against_regression_fails(scored: dict[str, Estimates]) -> None:
    res = _gate(scored["reg0"], scored["bucket0"])
    assert not res.passed
    # it fails on substance, not only on calibration
    assert any(not c.metric.startswith(CALIBRATION) for c in res.violations), format_result(res)


def test_injected_group_bias_fails(scored: dict[str, Estimates]) -> None:
    res = _gate(scored["reg0"], scored["reg0_biased"])
    assert not res.passed
    assert any(c.metric.startswith("group_gap(attribute=skin_tone") for c in res.violations), format_result(res)


def test_regression_candidate_against_bucket_baseline_passes(scored: dict[str, Estimates]) -> None:
    res = _gate(scored["bucket0"], scored["reg0"])
    assert res.passed, format_result(res)
