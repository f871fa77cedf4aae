"""Release gate: a candidate model may not be worse than the reference by more than declared tolerances.

The gate file (TOML) lists rules. A `statistic` rule (version 2) is noise-aware: the statistic
(model/evaluation/paired.py) is computed for both models on the same rows, the subject bootstrap
resamples the same people for both, and the rule fails only when the candidate is worse than the
reference by more than `tolerance` with the gate's `confidence` (the one-sided lower bound of the
paired difference exceeds the tolerance), never because a point estimate moved by a few people.
A `metric` rule (version 1) compares one number of metrics.json by its dotted path (`*` matches any
key); it reacts to point estimates and is kept for absolute limits and old gate files. The result
names every violated rule, so a CI log says why a release was refused. Format: docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model.evaluation.bootstrap import SubjectBootstrap
from model.evaluation.metrics import Estimates
from model.evaluation.paired import STATISTICS, Params, align, paired_replicates, params_from

GATE_VERSIONS = (1, 2)
GATE_VERSION = 2
DEFAULT_GATE_CONFIDENCE = 0.95
DEFAULT_GATE = Path(__file__).with_name("default_gate.toml")


class GateFileError(ValueError):
    """The gate file is malformed; the message names the rule and the fix."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    metric: str  # dotted path (metric rule) or statistic name (statistic rule)
    worse: Literal["higher", "lower"]
    tolerance: float = 0.0  # absolute slack in the metric's own unit
    relative_tolerance: float = 0.0  # slack as a fraction of the reference value, added to the above
    limit: float | None = None  # an absolute bound the candidate must respect whatever the reference
    paired: bool = False  # a statistic rule: judged on the paired subject bootstrap
    params: Params = field(default_factory=Params)


@dataclass(frozen=True, slots=True)
class Gate:
    rules: tuple[Rule, ...]
    source: str = ""
    confidence: float = DEFAULT_GATE_CONFIDENCE  # one-sided confidence a paired rule needs to fail
    bootstrap: int = 1000
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Check:
    rule: str
    metric: str
    reference: float | None
    candidate: float | None
    allowed: float | None
    passed: bool
    reason: str
    lower_bound: float | None = None  # paired rules: one-sided bound of how much worse the candidate is


@dataclass(slots=True)
class GateResult:
    candidate: str
    reference: str
    checks: list[Check] = field(default_factory=list)

    @property
    def violations(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def passed(self) -> bool:
        return not self.violations


RULE_KEYS = {"name", "metric", "statistic", "worse", "tolerance", "relative_tolerance", "limit"}
PARAM_KEYS = set(Params.__dataclass_fields__)


def parse_gate(doc: Mapping[str, Any], source: str = "") -> Gate:
    if doc.get("version", 1) not in GATE_VERSIONS:
        raise GateFileError(
            f"{source}: gate version {doc.get('version')!r} unsupported; this build reads {GATE_VERSIONS}"
        )
    confidence = float(doc.get("confidence", DEFAULT_GATE_CONFIDENCE))
    if not 0.5 <= confidence < 1.0:
        raise GateFileError(f"{source}: confidence must be in [0.5, 1), got {confidence}")
    raw = doc.get("rule", [])
    if not isinstance(raw, list) or not raw:
        raise GateFileError(f"{source}: no [[rule]] tables; a gate with no rules would pass anything")
    rules = []
    for i, r in enumerate(raw):
        where = f"{source}: rule {i + 1} ({r.get('name', r.get('metric', '?'))})"
        if ("metric" in r) == ("statistic" in r):
            raise GateFileError(
                f"{where}: give exactly one of `metric` (a dotted path into a model's metrics.json"
                f" entry) or `statistic` (one of {sorted(STATISTICS)})"
            )
        worse = r.get("worse")
        if worse not in ("higher", "lower"):
            raise GateFileError(f'{where}: `worse` must be "higher" or "lower", got {worse!r}')
        paired = "statistic" in r
        unknown = set(r) - RULE_KEYS - (PARAM_KEYS if paired else set())
        if unknown:
            raise GateFileError(f"{where}: unknown keys {sorted(unknown)}")
        if paired and r["statistic"] not in STATISTICS:
            raise GateFileError(f"{where}: unknown statistic {r['statistic']!r}; one of {sorted(STATISTICS)}")
        try:
            params = params_from(r) if paired else Params()
        except (TypeError, ValueError) as exc:
            raise GateFileError(f"{where}: bad parameter: {exc}") from exc
        key = str(r["statistic"] if paired else r["metric"])
        rules.append(
            Rule(
                name=str(r.get("name", key)),
                metric=key,
                worse=worse,
                tolerance=float(r.get("tolerance", 0.0)),
                relative_tolerance=float(r.get("relative_tolerance", 0.0)),
                limit=None if r.get("limit") is None else float(r["limit"]),
                paired=paired,
                params=params,
            )
        )
    return Gate(tuple(rules), source, confidence, int(doc.get("bootstrap", 1000)), int(doc.get("seed", 0)))


def load_gate(path: str | Path) -> Gate:
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise GateFileError(f"{p}: not valid TOML: {exc}") from exc
    return parse_gate(doc, str(p))


def expand(tree: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (concrete path, value) matching a dotted path with `*` wildcards; absent paths yield nothing."""

    def walk(node: Any, parts: list[str], done: list[str]) -> Iterator[tuple[str, Any]]:
        if not parts:
            yield ".".join(done), node
            return
        if not isinstance(node, Mapping):
            return
        head, rest = parts[0], parts[1:]
        keys = sorted(node) if head == "*" else [head] if head in node else []
        for k in keys:
            yield from walk(node[k], rest, [*done, str(k)])

    yield from walk(tree, path.split("."), [])


def _value(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def check_rule(rule: Rule, metric: str, ref: float | None, cand: float | None) -> Check:
    sign = 1.0 if rule.worse == "higher" else -1.0
    if cand is None:
        if ref is None:
            return Check(rule.name, metric, ref, cand, None, True, "not measured for either model")
        return Check(rule.name, metric, ref, cand, None, False, "measured for the reference but not the candidate")
    if rule.limit is not None and sign * (cand - rule.limit) > 0:
        return Check(
            rule.name,
            metric,
            ref,
            cand,
            rule.limit,
            False,
            f"{cand:.4g} is {rule.worse} than the limit {rule.limit:.4g}",
        )
    if ref is None:
        return Check(rule.name, metric, ref, cand, rule.limit, True, "no reference value; limit only")
    allowed = ref + sign * (rule.tolerance + rule.relative_tolerance * abs(ref))
    # A tiny epsilon keeps an identical candidate passing despite float round-off in the JSON round trip.
    if sign * (cand - allowed) > 1e-12:
        return Check(
            rule.name,
            metric,
            ref,
            cand,
            allowed,
            False,
            f"{cand:.4g} vs reference {ref:.4g}: worse ({rule.worse}) beyond the allowed {allowed:.4g}",
        )
    return Check(rule.name, metric, ref, cand, allowed, True, "within tolerance")


def describe(rule: Rule) -> str:
    """The statistic with the parameters it reads, e.g. `matched_rejection(threshold=18, target=0.01)`."""
    if not rule.paired:
        return rule.metric
    names = STATISTICS[rule.metric][1]
    args = ", ".join(
        f"{n}={getattr(rule.params, n):g}"
        if isinstance(getattr(rule.params, n), float)
        else f"{n}={getattr(rule.params, n)}"
        for n in names
    )
    return f"{rule.metric}({args})"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def check_paired(
    rule: Rule, confidence: float, reference: Estimates, candidate: Estimates, boot: SubjectBootstrap
) -> Check:
    """Fail only when the candidate is worse by more than the tolerance with `confidence`: the
    (1 - confidence) quantile of the paired bootstrap difference (oriented so positive = worse)
    exceeds the tolerance. The relative tolerance scales with the reference's point value."""
    label = describe(rule)
    r = paired_replicates(rule.metric, reference, candidate, rule.params, boot)
    ref, cand = _finite(r["reference"]), _finite(r["candidate"])
    sign = 1.0 if rule.worse == "higher" else -1.0
    alpha = 1.0 - confidence
    if cand is None:
        if ref is None:
            return Check(rule.name, label, ref, cand, None, True, "not measured for either model")
        return Check(rule.name, label, ref, cand, None, False, "measured for the reference but not the candidate")
    if rule.limit is not None:
        reps = r["candidate_reps"][np.isfinite(r["candidate_reps"])]
        bound = float(np.quantile(sign * reps, alpha)) if reps.size else sign * cand
        if bound > sign * rule.limit:
            return Check(
                rule.name,
                label,
                ref,
                cand,
                rule.limit,
                False,
                f"{cand:.4g} is {rule.worse} than the limit {rule.limit:.4g} with {confidence:.0%} confidence",
                sign * bound,
            )
    if ref is None:
        return Check(rule.name, label, ref, cand, rule.limit, True, "no reference value; limit only")
    tol = rule.tolerance + rule.relative_tolerance * abs(ref)
    d = sign * r["diff"]
    d = d[np.isfinite(d)]
    point = sign * (cand - ref)
    lower = float(np.quantile(d, alpha)) if d.size else point
    allowed = ref + sign * tol
    if lower > tol + 1e-12:
        return Check(
            rule.name,
            label,
            ref,
            cand,
            allowed,
            False,
            f"{cand:.4g} vs reference {ref:.4g}: worse ({rule.worse}) by {point:.4g}; even the "
            f"{confidence:.0%} lower bound {lower:.4g} exceeds the tolerance {tol:.4g}",
            lower,
        )
    return Check(
        rule.name,
        label,
        ref,
        cand,
        allowed,
        True,
        f"worse by {point:.4g}, {confidence:.0%} lower bound {lower:.4g} within tolerance {tol:.4g}",
        lower,
    )


def evaluate_paired_gate(
    gate: Gate,
    reference: Estimates,
    candidate: Estimates,
    reference_entry: Mapping[str, Any] | None = None,
    candidate_entry: Mapping[str, Any] | None = None,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
) -> GateResult:
    """Every rule: statistic rules on the two models' aligned rows with one shared subject bootstrap;
    metric rules on the metrics.json entries when given."""
    ref, cand = align(reference, candidate)
    boot = SubjectBootstrap(ref.subject_id, len(ref), n_boot=gate.bootstrap, seed=gate.seed, name="gate")
    result = GateResult(candidate_name, reference_name)
    metric_rules = [r for r in gate.rules if not r.paired]
    for rule in gate.rules:
        if not rule.paired:
            continue
        if rule.params.attribute == "*":
            # every attribute both models carry, one check each
            for attribute in sorted(set(ref.attributes) & set(cand.attributes)):
                concrete = dataclasses.replace(rule, params=dataclasses.replace(rule.params, attribute=attribute))
                result.checks.append(check_paired(concrete, gate.confidence, ref, cand, boot))
            continue
        result.checks.append(check_paired(rule, gate.confidence, ref, cand, boot))
    if metric_rules:
        if reference_entry is None or candidate_entry is None:
            for rule in metric_rules:
                result.checks.append(
                    Check(
                        rule.name,
                        rule.metric,
                        None,
                        None,
                        None,
                        False,
                        "metric rule needs both models' metrics.json entries",
                    )
                )
        else:
            sub_gate = Gate(tuple(metric_rules), gate.source)
            result.checks.extend(evaluate_gate(sub_gate, reference_entry, candidate_entry).checks)
    return result


def evaluate_gate(
    gate: Gate,
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    reference_name: str = "reference",
    candidate_name: str = "candidate",
) -> GateResult:
    """Compare one candidate model entry with the reference entry by point values (metric rules only;
    statistic rules need row-level estimates: `evaluate_paired_gate`)."""
    result = GateResult(candidate_name, reference_name)
    for rule in gate.rules:
        if rule.paired:
            result.checks.append(
                Check(
                    rule.name,
                    rule.metric,
                    None,
                    None,
                    None,
                    False,
                    "statistic rule needs both models' row-level estimates",
                )
            )
            continue
        ref_vals = dict(expand(reference, rule.metric))
        cand_vals = dict(expand(candidate, rule.metric))
        if not ref_vals and not cand_vals:
            result.checks.append(
                Check(
                    rule.name,
                    rule.metric,
                    None,
                    None,
                    None,
                    False,
                    "metric path matches nothing in either model: fix the gate file",
                )
            )
            continue
        for path in sorted(set(ref_vals) | set(cand_vals)):
            result.checks.append(check_rule(rule, path, _value(ref_vals.get(path)), _value(cand_vals.get(path))))
    return result


def format_result(result: GateResult) -> str:
    head = f"gate {'PASSED' if result.passed else 'FAILED'}: {result.candidate} vs {result.reference}"
    lines = [head]
    for c in result.violations:
        lines.append(f"  VIOLATED [{c.rule}] {c.metric}: {c.reason}")
    return "\n".join(lines)
