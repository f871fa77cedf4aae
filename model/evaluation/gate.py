"""Release gate: a candidate model may not be worse than the reference by more than declared tolerances.

The gate file (TOML) lists rules; each names a metric by its dotted path inside one model's entry of
metrics.json (`*` matches any key at that level, e.g. every attribute), which direction is worse, and
how much worse is tolerated. The result names every violated rule, so a CI log says why a release
was refused. See docs/evaluation.md for the file format.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

GATE_VERSION = 1
DEFAULT_GATE = Path(__file__).with_name("default_gate.toml")


class GateFileError(ValueError):
    """The gate file is malformed; the message names the rule and the fix."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    metric: str
    worse: Literal["higher", "lower"]
    tolerance: float = 0.0  # absolute slack in the metric's own unit
    relative_tolerance: float = 0.0  # slack as a fraction of the reference value, added to the above
    limit: float | None = None  # an absolute bound the candidate must respect whatever the reference


@dataclass(frozen=True, slots=True)
class Gate:
    rules: tuple[Rule, ...]
    source: str = ""


@dataclass(frozen=True, slots=True)
class Check:
    rule: str
    metric: str
    reference: float | None
    candidate: float | None
    allowed: float | None
    passed: bool
    reason: str


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


def parse_gate(doc: Mapping[str, Any], source: str = "") -> Gate:
    if doc.get("version", GATE_VERSION) != GATE_VERSION:
        raise GateFileError(
            f"{source}: gate version {doc.get('version')!r} unsupported; this build reads {GATE_VERSION}"
        )
    raw = doc.get("rule", [])
    if not isinstance(raw, list) or not raw:
        raise GateFileError(f"{source}: no [[rule]] tables; a gate with no rules would pass anything")
    rules = []
    for i, r in enumerate(raw):
        where = f"{source}: rule {i + 1} ({r.get('name', r.get('metric', '?'))})"
        if "metric" not in r:
            raise GateFileError(f"{where}: missing `metric` (a dotted path into a model's metrics.json entry)")
        worse = r.get("worse")
        if worse not in ("higher", "lower"):
            raise GateFileError(f"{where}: `worse` must be \"higher\" or \"lower\", got {worse!r}")
        unknown = set(r) - {"name", "metric", "worse", "tolerance", "relative_tolerance", "limit"}
        if unknown:
            raise GateFileError(f"{where}: unknown keys {sorted(unknown)}")
        rules.append(Rule(
            name=str(r.get("name", r["metric"])), metric=str(r["metric"]), worse=worse,
            tolerance=float(r.get("tolerance", 0.0)), relative_tolerance=float(r.get("relative_tolerance", 0.0)),
            limit=None if r.get("limit") is None else float(r["limit"]),
        ))
    return Gate(tuple(rules), source)


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
        return Check(rule.name, metric, ref, cand, rule.limit, False,
                     f"{cand:.4g} is {rule.worse} than the limit {rule.limit:.4g}")
    if ref is None:
        return Check(rule.name, metric, ref, cand, rule.limit, True, "no reference value; limit only")
    allowed = ref + sign * (rule.tolerance + rule.relative_tolerance * abs(ref))
    # A tiny epsilon keeps an identical candidate passing despite float round-off in the JSON round trip.
    if sign * (cand - allowed) > 1e-12:
        return Check(rule.name, metric, ref, cand, allowed, False,
                     f"{cand:.4g} vs reference {ref:.4g}: worse ({rule.worse}) beyond the allowed {allowed:.4g}")
    return Check(rule.name, metric, ref, cand, allowed, True, "within tolerance")


def evaluate_gate(
    gate: Gate, reference: Mapping[str, Any], candidate: Mapping[str, Any],
    reference_name: str = "reference", candidate_name: str = "candidate",
) -> GateResult:
    """Compare one candidate model entry with the reference entry, rule by rule."""
    result = GateResult(candidate_name, reference_name)
    for rule in gate.rules:
        ref_vals = dict(expand(reference, rule.metric))
        cand_vals = dict(expand(candidate, rule.metric))
        if not ref_vals and not cand_vals:
            result.checks.append(Check(rule.name, rule.metric, None, None, None, False,
                                       "metric path matches nothing in either model: fix the gate file"))
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
