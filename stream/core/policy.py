"""The policy: a versioned TOML file turned into a pure decision function.

`decide(belief, event, policy)` depends on nothing else, so the worker, the replay tool and the
evaluation's policy replay reach the same decision from the same inputs.

Decision rule for one surface (min_age A, buffer b, required confidence c, hysteresis margin m):
- ALLOW when P(age >= A + b) >= c; RESTRICT or BLOCK (per surface) when P(age < A) >= c;
  REQUIRE_VERIFICATION in between. The buffer only raises the bar to allow; it never widens the
  under-age side, so a buffer cannot turn an adult into a "minor".
- Hysteresis: the action last emitted for this user, jurisdiction and surface (stored beside the
  belief in Redis, passed in as `PolicyEvent.previous_action`) is kept while its probability stays
  above c - m instead of c. Validation requires c - m > 0.5, so ALLOW and under-age can never both
  qualify, and an older belief can never get a stricter action.
- Safety by default, whatever the hysteresis: no belief, a dependency down, or fewer than
  `min_observations` estimates never yields ALLOW (too little evidence may still yield the
  under-age action when that is already certain). A declared age below A is taken at its word.
- A declared age is contradicted when P(age < declared - tolerance) >= contradiction confidence;
  the action becomes at least REQUIRE_VERIFICATION. One-sided on purpose: looking older than one
  claims is no age-assurance concern.
- A verified belief is authoritative: its age against A decides, no buffer, no confidence.
"""

from __future__ import annotations

import importlib.resources
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from stream.core.belief import GAUSSIAN_FLOOR, Belief, FloorByAge, FloorShape, judged_belief, p_at_least_shaped
from stream.errors import ConfigError


class PolicyError(ConfigError):
    """The policy file is invalid; every problem is listed with its location (file: key path)."""

    subject = "policy"


class Action(StrEnum):
    ALLOW = "ALLOW"
    RESTRICT = "RESTRICT"
    REQUIRE_VERIFICATION = "REQUIRE_VERIFICATION"
    BLOCK = "BLOCK"


# How strict an action is; used to combine rules ("at least REQUIRE_VERIFICATION").
STRICTNESS = {Action.ALLOW: 0, Action.REQUIRE_VERIFICATION: 1, Action.RESTRICT: 2, Action.BLOCK: 3}


def stricter(a: Action, b: Action) -> Action:
    return a if STRICTNESS[a] >= STRICTNESS[b] else b


@dataclass(frozen=True, slots=True)
class SurfaceRule:
    min_age: float
    buffer_years: float
    required_confidence: float
    under_age_action: Action


@dataclass(frozen=True, slots=True)
class Jurisdiction:
    name: str
    surfaces: Mapping[str, SurfaceRule]  # already merged with the default jurisdiction's surfaces


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    default_jurisdiction: str
    jurisdictions: Mapping[str, Jurisdiction]
    half_life_s: float
    min_observations: int
    hysteresis_margin: float
    declared_age_tolerance_years: float
    declared_contradiction_confidence: float


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    jurisdiction: str
    surface: str
    event_time: float
    declared_age: float | None = None
    previous_action: Action | None = None  # last action for this user+jurisdiction+surface


@dataclass(frozen=True, slots=True)
class DecisionEvidence:
    age_mean: float | None
    age_std: float | None
    observations: int
    threshold: float | None
    buffer: float | None
    required_confidence: float | None
    p_at_least_threshold: float | None
    p_at_least_threshold_plus_buffer: float | None
    verified: bool
    declared_age: float | None
    previous_action: Action | None


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason_codes: tuple[str, ...]
    evidence: DecisionEvidence
    policy_version: str
    jurisdiction: str
    surface: str


# --- loading -------------------------------------------------------------------------------------

_TOP_KEYS = {"version", "default_jurisdiction", "settings", "jurisdictions"}
_SETTINGS_KEYS = {
    "half_life_days",
    "min_observations",
    "hysteresis_margin",
    "declared_age_tolerance_years",
    "declared_contradiction_confidence",
}
_SURFACE_KEYS = {"min_age", "buffer_years", "required_confidence", "under_age_action"}


def default_policy_path() -> Path:
    return Path(str(importlib.resources.files("stream").joinpath("policies/default.toml")))


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy file (None: the packaged default); PolicyError lists every problem."""
    p = Path(path) if path else default_policy_path()
    try:
        text = p.read_text()
    except OSError as exc:
        raise PolicyError([f"{p}: cannot read: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"{p}: not valid TOML: {exc}"]) from None
    return parse_policy(data, source=str(p))


class _Problems:
    """Collects every problem of a policy file, so one run of `policy check` lists them all."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def err(self, where: str, msg: str) -> None:
        self.errors.append(f"{self.source}: {where}: {msg}")

    def unknown_keys(self, where: str, table: Mapping[str, Any], known: set[str]) -> None:
        for key in table:
            if key not in known:
                self.err(f"{where}.{key}" if where else key, "unknown key")

    def table(self, where: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.err(where, "must be a table")
            return {}
        return value

    def number(
        self, where: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.err(where, f"expected a number, got {value!r}")
            return math.nan
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
            self.err(where, f"must be in {lb}{lo}, {hi}{rb}, got {value}")
        return float(value)


@dataclass(frozen=True, slots=True)
class _Settings:
    half_life_days: float
    min_observations: int
    hysteresis_margin: float
    declared_age_tolerance_years: float
    declared_contradiction_confidence: float


def _parse_settings(raw: Any, problems: _Problems) -> _Settings:
    settings = problems.table("settings", raw)
    problems.unknown_keys("settings", settings, _SETTINGS_KEYS)
    min_obs = settings.get("min_observations", 2)
    if isinstance(min_obs, bool) or not isinstance(min_obs, int) or min_obs < 1:
        problems.err("settings.min_observations", f"expected an integer >= 1, got {min_obs!r}")
        min_obs = 1
    return _Settings(
        half_life_days=problems.number(
            "settings.half_life_days", settings.get("half_life_days", 365.0), 0, 1e6, lo_open=True
        ),
        min_observations=min_obs,
        hysteresis_margin=problems.number(
            "settings.hysteresis_margin", settings.get("hysteresis_margin", 0.05), 0, 0.5, hi_open=True
        ),
        declared_age_tolerance_years=problems.number(
            "settings.declared_age_tolerance_years", settings.get("declared_age_tolerance_years", 4.0), 0, 100
        ),
        declared_contradiction_confidence=problems.number(
            "settings.declared_contradiction_confidence",
            settings.get("declared_contradiction_confidence", 0.95),
            0.5,
            1,
            lo_open=True,
            hi_open=True,
        ),
    )


def _parse_surface(where: str, sdata: dict[str, Any], margin: float, problems: _Problems) -> SurfaceRule:
    problems.unknown_keys(where, sdata, _SURFACE_KEYS)
    for key in sorted(_SURFACE_KEYS - set(sdata)):
        problems.err(f"{where}.{key}", "required")
    min_age = problems.number(f"{where}.min_age", sdata.get("min_age", 0), 0, 120)
    buffer = problems.number(f"{where}.buffer_years", sdata.get("buffer_years", 0), 0, 20)
    conf = problems.number(
        f"{where}.required_confidence", sdata.get("required_confidence", 0.9), 0.5, 1, lo_open=True, hi_open=True
    )
    if math.isfinite(conf) and math.isfinite(margin) and conf - margin <= 0.5:
        problems.err(
            f"{where}.required_confidence", f"minus settings.hysteresis_margin ({margin}) must stay > 0.5, got {conf}"
        )
    raw_action = sdata.get("under_age_action", "BLOCK")
    if raw_action not in ("RESTRICT", "BLOCK"):
        problems.err(f"{where}.under_age_action", f"must be RESTRICT or BLOCK, got {raw_action!r}")
        raw_action = "BLOCK"
    return SurfaceRule(min_age, buffer, conf, Action(raw_action))


def _parse_jurisdictions(raw: Any, margin: float, problems: _Problems) -> dict[str, dict[str, SurfaceRule]]:
    if not isinstance(raw, dict) or not raw:
        problems.err("jurisdictions", "required, a table with at least one jurisdiction")
        return {}
    parsed: dict[str, dict[str, SurfaceRule]] = {}
    for jname, jdata in raw.items():
        jwhere = f"jurisdictions.{jname}"
        if not isinstance(jdata, dict):
            problems.err(jwhere, "must be a table")
            continue
        problems.unknown_keys(jwhere, jdata, {"surfaces", "description"})
        surfaces = problems.table(f"{jwhere}.surfaces", jdata.get("surfaces", {}))
        rules: dict[str, SurfaceRule] = {}
        for sname, sdata in surfaces.items():
            where = f"{jwhere}.surfaces.{sname}"
            if not isinstance(sdata, dict):
                problems.err(where, "must be a table")
                continue
            rules[sname] = _parse_surface(where, sdata, margin, problems)
        parsed[jname] = rules
    return parsed


def parse_policy(data: Mapping[str, Any], *, source: str = "<policy>") -> Policy:
    """A validated Policy; PolicyError lists every problem found, not just the first."""
    problems = _Problems(source)
    problems.unknown_keys("", data, _TOP_KEYS)
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        problems.err("version", f"required, a non-empty string (got {version!r})")
        version = ""
    settings = _parse_settings(data.get("settings", {}), problems)
    parsed = _parse_jurisdictions(data.get("jurisdictions"), settings.hysteresis_margin, problems)
    default_name = data.get("default_jurisdiction")
    if not isinstance(default_name, str) or default_name not in parsed:
        problems.err("default_jurisdiction", f"must name a jurisdiction defined in this file, got {default_name!r}")
        default_name = ""
    elif not parsed[default_name]:
        problems.err(f"jurisdictions.{default_name}.surfaces", "the default jurisdiction must define a surface")
    if problems.errors:
        raise PolicyError(problems.errors)
    defaults = parsed[default_name]
    jurisdictions = {name: Jurisdiction(name, {**defaults, **rules}) for name, rules in parsed.items()}
    return Policy(
        version=str(version),
        default_jurisdiction=default_name,
        jurisdictions=jurisdictions,
        half_life_s=settings.half_life_days * 86400.0,
        min_observations=settings.min_observations,
        hysteresis_margin=settings.hysteresis_margin,
        declared_age_tolerance_years=settings.declared_age_tolerance_years,
        declared_contradiction_confidence=settings.declared_contradiction_confidence,
    )


# --- deciding ------------------------------------------------------------------------------------


def decide(
    belief: Belief | None,
    event: PolicyEvent,
    policy: Policy,
    *,
    dependency_down: bool = False,
    now: float | None = None,
    half_life_s: float | None = None,
    floor_shape: FloorShape = GAUSSIAN_FLOOR,
    floor_by_age: FloorByAge | None = None,
) -> Decision:
    """The action for one event; pure: same inputs, same decision.

    `now` (default: the event time) is when the belief is judged; `half_life_s` (default: the
    policy's) must match the store's, or pass a belief already decayed to `now`. `floor_shape` is the
    live model's shape of the person-level error (stream/core/belief.py FloorShape): every
    P(age >= T) here is the mixture tail over the belief's floor; the default is the plain Gaussian.
    `floor_by_age` is the live model's floor table (stream/core/belief.py FloorByAge): an estimated
    belief is then judged (P, and the reported std) with the table's floor at its mean instead of its
    stored floor (by default never below it); None (the worker) keeps the stored floor.
    """
    t = event.event_time if now is None else now
    hl = policy.half_life_s if half_life_s is None else half_life_s
    reasons: list[str] = []
    jur = policy.jurisdictions.get(event.jurisdiction)
    if jur is None:
        jur = policy.jurisdictions[policy.default_jurisdiction]
        reasons.append("unknown_jurisdiction_fallback")
    rule = jur.surfaces.get(event.surface)
    prev = event.previous_action

    mean = std = None
    ivar = floor = 0.0
    if belief is not None:
        belief = judged_belief(belief, t, floor_by_age)
        mean = belief.age_at(t)
        std = belief.std_at(t, hl)
        ivar, floor = belief.independent_var_at(t, hl), belief.floor
    verified = belief is not None and belief.verified
    p_thr = p_buf = None
    if rule is not None and mean is not None and std is not None:
        p_thr = p_at_least_shaped(mean, ivar, floor, rule.min_age, floor_shape)
        p_buf = p_at_least_shaped(mean, ivar, floor, rule.min_age + rule.buffer_years, floor_shape)

    def done(action: Action) -> Decision:
        evidence = DecisionEvidence(
            age_mean=mean,
            age_std=std,
            observations=belief.observations if belief is not None else 0,
            threshold=rule.min_age if rule else None,
            buffer=rule.buffer_years if rule else None,
            required_confidence=rule.required_confidence if rule else None,
            p_at_least_threshold=p_thr,
            p_at_least_threshold_plus_buffer=p_buf,
            verified=verified,
            declared_age=event.declared_age,
            previous_action=prev,
        )
        return Decision(action, tuple(reasons), evidence, policy.version, jur.name, event.surface)

    if rule is None:
        reasons.append("unknown_surface")
        return done(Action.REQUIRE_VERIFICATION)
    if dependency_down:
        # Without the belief we cannot judge; keep a stricter previous action rather than relax it.
        reasons.append("dependency_unavailable")
        return done(stricter(Action.REQUIRE_VERIFICATION, prev) if prev else Action.REQUIRE_VERIFICATION)
    if verified and mean is not None:
        if mean >= rule.min_age:
            reasons.append("verified_age")
            return done(Action.ALLOW)
        reasons.append("verified_under_age")
        return done(rule.under_age_action)
    if event.declared_age is not None and event.declared_age < rule.min_age:
        reasons.append("declared_under_age")
        return done(rule.under_age_action)
    if belief is None or p_thr is None or p_buf is None or mean is None or std is None:
        reasons.append("no_belief")
        return done(Action.REQUIRE_VERIFICATION)

    action = _estimated_action(rule, policy, prev, p_thr, p_buf, belief.observations, reasons)
    if event.declared_age is not None:
        p_contra = 1.0 - p_at_least_shaped(
            mean, ivar, floor, event.declared_age - policy.declared_age_tolerance_years, floor_shape
        )
        if p_contra >= policy.declared_contradiction_confidence:
            reasons.append("declared_age_contradicted")
            action = stricter(action, Action.REQUIRE_VERIFICATION)
    return done(action)


def _estimated_action(
    rule: SurfaceRule,
    policy: Policy,
    prev: Action | None,
    p_thr: float,
    p_buf: float,
    observations: int,
    reasons: list[str],
) -> Action:
    """The action an estimated belief earns: ALLOW needs enough observations and P(age >= threshold +
    buffer) at the required confidence; leaving the previous action needs `hysteresis_margin` more."""
    conf, margin = rule.required_confidence, policy.hysteresis_margin
    allow_conf = conf - margin if prev is Action.ALLOW else conf
    under_conf = conf - margin if prev is rule.under_age_action else conf
    p_under = 1.0 - p_thr
    enough = observations >= policy.min_observations
    if enough and p_buf >= allow_conf:
        reasons.append("estimated_over_age")
        if p_buf < conf:
            reasons.append("hysteresis_hold")
        return Action.ALLOW
    if p_under >= under_conf:
        reasons.append("estimated_under_age")
        if p_under < conf:
            reasons.append("hysteresis_hold")
        return rule.under_age_action
    reasons.append("insufficient_evidence" if not enough else "uncertain")
    return Action.REQUIRE_VERIFICATION
