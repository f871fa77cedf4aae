"""Release gate: file parsing, wildcard paths, and pass/fail on identical and worse candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.evaluation.gate import (
    DEFAULT_GATE,
    GateFileError,
    GateResult,
    evaluate_gate,
    evaluate_paired_gate,
    expand,
    format_result,
    load_gate,
    parse_gate,
)
from model.evaluation.metrics import Estimates


def rule(**kw: object) -> dict[str, object]:
    return {"rule": [{"metric": "a.b", "worse": "higher", **kw}]}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "no \\[\\[rule\\]\\]"),
        ({"rule": [{"worse": "higher"}]}, "exactly one of `metric`"),
        ({"rule": [{"metric": "x", "statistic": "mae", "worse": "higher"}]}, "exactly one of `metric`"),
        ({"version": 2, "rule": [{"statistic": "maee", "worse": "higher"}]}, "unknown statistic"),
        ({"version": 2, "rule": [{"statistic": "mae", "worse": "higher", "threshold": "x"}]}, "bad parameter"),
        ({"version": 2, "confidence": 0.2, "rule": [{"statistic": "mae", "worse": "higher"}]}, "confidence"),
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


def test_point_rules_on_metrics_json_still_work() -> None:
    gate = parse_gate(rule(tolerance=0.1))
    assert evaluate_gate(gate, {"a": {"b": 0.5}}, {"a": {"b": 0.55}}).passed
    assert not evaluate_gate(gate, {"a": {"b": 0.5}}, {"a": {"b": 0.7}}).passed
    paired_only = parse_gate({"version": 2, "rule": [{"statistic": "mae", "worse": "higher"}]})
    assert "row-level estimates" in evaluate_gate(paired_only, {}, {}).violations[0].reason


# --- the paired, noise-aware gate on synthetic prediction tables with known properties ---------------

N_SUBJECTS, PER = 500, 4


def _people(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Subjects with fixed true ages (a few months apart between photos), a persistent look-older or
    look-younger offset per person, and an attribute per person."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(N_SUBJECTS), PER)
    age = rng.uniform(6, 45, N_SUBJECTS)[subject] + rng.uniform(0, 0.5, subject.size)
    offset = rng.normal(0, 2.0, N_SUBJECTS)[subject]
    tone = rng.choice(["light", "medium", "dark"], N_SUBJECTS)[subject]
    return age, offset, tone, subject


def _model(
    noise_seed: int,
    *,
    shift_minors: float = 0.0,
    bias_dark: float = 0.0,
    std: float = 2.6,
    scale: float = 1.0,
    people_seed: int = 0,
) -> Estimates:
    """One 'trained model': the person's persistent offset (shared by every model, it is the face)
    plus this model's own per-person and per-photo error, drawn from `noise_seed`."""
    age, offset, tone, subject = _people(people_seed)
    rng = np.random.default_rng(1000 + noise_seed)
    own = rng.normal(0, 1.0, N_SUBJECTS)[subject] + rng.normal(0, 1.0, subject.size)
    mean = age + scale * (offset + own) + np.where(age < 18, shift_minors, 0.0) + np.where(tone == "dark", bias_dark, 0)
    return Estimates.build(
        age,
        mean,
        np.full(age.size, std),
        {"skin_tone": tone},
        subject_id=[f"p{i}" for i in subject],
        row_id=[f"img/{i}.jpg" for i in range(age.size)],
    )


def _violated(result: GateResult) -> set[str]:
    return {c.metric for c in result.violations}


def test_default_gate_passes_identical_and_another_seed() -> None:
    gate = load_gate(DEFAULT_GATE)
    ref = _model(0)
    same = evaluate_paired_gate(gate, ref, _model(0))
    assert same.passed, format_result(same)
    for seed in (1, 2, 3):
        other = evaluate_paired_gate(gate, ref, _model(seed))
        assert other.passed, format_result(other)


def test_default_gate_fails_minors_passed_more_often() -> None:
    bad = evaluate_paired_gate(load_gate(DEFAULT_GATE), _model(0), _model(1, shift_minors=3.0), candidate_name="worse")
    assert not bad.passed
    assert "under_age_pass_rate(threshold=18, buffer=3)" in _violated(bad)
    text = format_result(bad)
    assert "FAILED: worse" in text
    assert "lower bound" in text


def test_injected_group_bias_fails_the_gap_rule() -> None:
    bad = evaluate_paired_gate(load_gate(DEFAULT_GATE), _model(0), _model(1, bias_dark=3.0))
    assert any(m.startswith("group_gap(attribute=skin_tone, group_metric=mean_signed_error") for m in _violated(bad))


def test_coverage_rule_is_two_sided() -> None:
    gate = load_gate(DEFAULT_GATE)
    ref = _model(0)  # std 2.6 against a true error sd of sqrt(4 + 1 + 1) = 2.45: about right
    too_wide = evaluate_paired_gate(gate, ref, _model(1, std=6.0))
    too_narrow = evaluate_paired_gate(gate, ref, _model(1, std=1.0))
    # too wide: the 50% interval covers ~90%; too narrow: the 95% interval covers ~55%
    assert "coverage_error(level=0.5)" in _violated(too_wide)
    assert "coverage_error(level=0.95)" in _violated(too_narrow)
    assert "nll()" in _violated(too_wide)


def test_a_stricter_model_is_not_punished_for_sitting_elsewhere_on_the_curve() -> None:
    """A candidate that estimates everyone 1.5 years younger refuses more 18-20-year-olds at every
    fixed buffer, but it is the same model shifted: at matched under-18 pass rates it costs adults
    the same, so the gate passes it. A point-estimate gate on fixed buffers blocks it."""
    ref = _model(0)
    cand = _model(0)
    shifted = Estimates.build(
        cand.true_age, cand.mean - 1.5, cand.std, cand.attributes, subject_id=cand.subject_id, row_id=cand.row_id
    )
    res = evaluate_paired_gate(load_gate(DEFAULT_GATE), ref, shifted)
    matched = [c for c in res.checks if c.metric.startswith("matched_rejection(threshold=18")]
    assert matched
    assert all(c.passed for c in matched)
    fixed = parse_gate(
        {
            "version": 2,
            "rule": [
                {
                    "statistic": "false_rejection_rate",
                    "threshold": 18,
                    "buffer": 3,
                    "worse": "higher",
                    "tolerance": 0.02,
                }
            ],
        }
    )
    assert not evaluate_paired_gate(fixed, ref, shifted).passed


def test_a_handful_of_events_is_noise_not_a_regression() -> None:
    """Three more minors of ~700 passed at 25 (0.4 points) fail a point-estimate rule with tolerance 0,
    but not a paired rule with tolerance 0 at 95% confidence."""
    ref = _model(0)
    t, m = ref.true_age, ref.mean.copy()
    minors = np.flatnonzero((t < 18) & (m < 25))[:3]
    m[minors] = 26.0
    cand = Estimates.build(t, m, ref.std, ref.attributes, subject_id=ref.subject_id, row_id=ref.row_id)
    doc = {"version": 2, "rule": [{"statistic": "challenge_fpr_under_18", "worse": "higher", "tolerance": 0.0}]}
    assert evaluate_paired_gate(parse_gate(doc), ref, cand).passed


def test_pairing_uses_rows_both_models_scored() -> None:
    ref = _model(0)
    cand = _model(1)
    keep = np.ones(len(cand), dtype=bool)
    keep[:10] = False  # the candidate failed to score ten frames
    reordered = cand.subset(keep)
    res = evaluate_paired_gate(load_gate(DEFAULT_GATE), ref, reordered)
    assert res.passed, format_result(res)


def test_load_gate_reports_bad_toml(tmp_path: Path) -> None:
    p = tmp_path / "g.toml"
    p.write_text("rule = [")
    with pytest.raises(GateFileError, match="not valid TOML"):
        load_gate(p)
