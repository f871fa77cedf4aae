"""Release gate: file parsing, wildcard paths, and pass/fail on identical and worse candidates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.evaluation.gate import (
    DEFAULT_GATE,
    GateFileError,
    evaluate_gate,
    expand,
    format_result,
    load_gate,
    parse_gate,
)
from model.evaluation.metrics import Estimates
from model.evaluation.report import _clean, model_metrics


def rule(**kw: object) -> dict[str, object]:
    return {"rule": [{"metric": "a.b", "worse": "higher", **kw}]}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "no \\[\\[rule\\]\\]"),
        ({"rule": [{"worse": "higher"}]}, "missing `metric`"),
        ({"rule": [{"metric": "x", "worse": "up"}]}, "`worse` must be"),
        ({"rule": [{"metric": "x", "worse": "higher", "tolerence": 1}]}, "unknown keys"),
        ({"version": 9, "rule": [{"metric": "x", "worse": "higher"}]}, "version"),
    ],
)
def test_bad_gate_files_say_why(doc: dict[str, object], message: str) -> None:
    with pytest.raises(GateFileError, match=message):
        parse_gate(doc, "g.toml")


def test_expand_wildcards() -> None:
    tree = {"fairness": {"sex": {"mae": {"gap": 1.0}}, "tone": {"mae": {"gap": 2.0}}}}
    assert dict(expand(tree, "fairness.*.mae.gap")) == {"fairness.sex.mae.gap": 1.0, "fairness.tone.mae.gap": 2.0}
    assert list(expand(tree, "fairness.none.mae.gap")) == []


def test_tolerances_directions_and_limits() -> None:
    ref = {"a": {"b": 0.10}}
    gate = parse_gate(rule(tolerance=0.02))
    assert evaluate_gate(gate, ref, {"a": {"b": 0.12}}).passed
    assert not evaluate_gate(gate, ref, {"a": {"b": 0.13}}).passed
    assert evaluate_gate(gate, ref, {"a": {"b": 0.0}}).passed  # better is always fine
    lower = parse_gate({"rule": [{"metric": "a.b", "worse": "lower", "relative_tolerance": 0.5}]})
    assert evaluate_gate(lower, ref, {"a": {"b": 0.05}}).passed
    assert not evaluate_gate(lower, ref, {"a": {"b": 0.04}}).passed
    limited = parse_gate(rule(tolerance=1.0, limit=0.11))
    res = evaluate_gate(limited, ref, {"a": {"b": 0.12}})
    assert not res.passed
    assert "limit" in res.violations[0].reason


def test_missing_values() -> None:
    gate = parse_gate(rule())
    assert not evaluate_gate(gate, {"a": {"b": 0.1}}, {"a": {"b": None}}).passed
    assert evaluate_gate(gate, {"a": {"b": None}}, {"a": {"b": None}}).passed
    nowhere = evaluate_gate(parse_gate({"rule": [{"metric": "no.such", "worse": "higher"}]}), {}, {})
    assert not nowhere.passed
    assert "matches nothing" in nowhere.violations[0].reason


def _estimates(shift_minors: float = 0.0, seed: int = 0) -> Estimates:
    rng = np.random.default_rng(seed)
    n = 1500
    t = rng.uniform(6, 40, n)
    p = t + rng.normal(0, 2.5, n) + np.where(t < 18, shift_minors, 0.0)
    return Estimates.build(t, p, np.full(n, 2.5), {"sex": rng.choice(["F", "M"], n)})


def _entry(est: Estimates, name: str) -> dict[str, object]:
    # round-trip through JSON, as the gate sees a metrics.json
    out: dict[str, object] = json.loads(json.dumps(_clean(model_metrics(est, name=name, n_boot=50))))
    return out


def test_default_gate_passes_identical_and_fails_worse_candidate() -> None:
    gate = load_gate(DEFAULT_GATE)
    reference = _entry(_estimates(), "ref")
    identical = _entry(_estimates(), "same")
    worse = _entry(_estimates(shift_minors=3.0), "worse")  # minors look 3 years older
    ok = evaluate_gate(gate, reference, identical, "ref", "same")
    assert ok.passed, format_result(ok)
    bad = evaluate_gate(gate, reference, worse, "ref", "worse")
    assert not bad.passed
    violated = {c.rule for c in bad.violations}
    assert "under-18 pass rate at 18+3 may not rise" in violated
    text = format_result(bad)
    assert "FAILED" in text
    assert "thresholds.18.buffers.3.under_age_pass_rate" in text


def test_load_gate_reports_bad_toml(tmp_path: Path) -> None:
    p = tmp_path / "g.toml"
    p.write_text("rule = [")
    with pytest.raises(GateFileError, match="not valid TOML"):
        load_gate(p)
