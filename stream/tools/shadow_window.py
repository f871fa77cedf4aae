"""How far a shadow model's decisions strayed from the live ones over a window (promotion's guardrail).

The shadow topic (stream/pipeline/shadow.py) carries one JSON record per shadowed event. Over the records
of one candidate version written in the window, we count events, action changes, changes to ALLOW
(the direction that can let a minor through) and the mean absolute difference of frame estimates,
and compare them with the configured bounds. `summarise` and `violations` are pure; `read_window`
reads the topic. A record that is not valid JSON is counted, not fatal: one bad record must not
block or pass a promotion. Records carry user ids; nothing here logs or keeps them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from stream.config import Settings

ALLOW = "ALLOW"


@dataclass(frozen=True, slots=True)
class ShadowBounds:
    window_s: float
    min_events: int
    max_action_change_rate: float
    max_new_allow_rate: float
    max_mean_abs_diff_years: float

    @classmethod
    def from_settings(cls, s: Settings) -> ShadowBounds:
        return cls(
            window_s=s.promote_shadow_window_hours * 3600.0,
            min_events=s.promote_shadow_min_events,
            max_action_change_rate=s.promote_shadow_max_action_change_rate,
            max_new_allow_rate=s.promote_shadow_max_new_allow_rate,
            max_mean_abs_diff_years=s.promote_shadow_max_mean_abs_diff_years,
        )


@dataclass(slots=True)
class ShadowSummary:
    model_version: str
    since: float
    until: float
    events: int = 0
    action_changes: int = 0
    new_allows: int = 0
    diff_sum: float = 0.0
    diff_events: int = 0
    other_versions: int = 0
    unreadable: int = 0
    changes: dict[str, int] = field(default_factory=dict)  # "LIVE->SHADOW": count

    @property
    def action_change_rate(self) -> float | None:
        return self.action_changes / self.events if self.events else None

    @property
    def new_allow_rate(self) -> float | None:
        return self.new_allows / self.events if self.events else None

    @property
    def mean_abs_diff_years(self) -> float | None:
        return self.diff_sum / self.diff_events if self.diff_events else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "since": self.since,
            "until": self.until,
            "events": self.events,
            "action_changes": self.action_changes,
            "new_allows": self.new_allows,
            "action_change_rate": self.action_change_rate,
            "new_allow_rate": self.new_allow_rate,
            "mean_abs_diff_years": self.mean_abs_diff_years,
            "other_versions": self.other_versions,
            "unreadable": self.unreadable,
            "changes": dict(sorted(self.changes.items())),
        }


def summarise(records: Iterable[tuple[float, bytes]], model_version: str, since: float, until: float) -> ShadowSummary:
    """(timestamp seconds, record value) pairs -> the candidate's disagreement in [since, until]."""
    out = ShadowSummary(model_version, since, until)
    for ts, value in records:
        if not since <= ts <= until:
            continue
        try:
            body = json.loads(value)
            shadow, live = body["shadow"], body["live"]
            version, s_action, l_action = shadow["model_version"], shadow["action"], live["action"]
        except (ValueError, TypeError, KeyError):
            out.unreadable += 1
            continue
        if version != model_version:
            out.other_versions += 1
            continue
        out.events += 1
        if s_action != l_action:
            out.action_changes += 1
            key = f"{l_action}->{s_action}"
            out.changes[key] = out.changes.get(key, 0) + 1
            if s_action == ALLOW:
                out.new_allows += 1
        diff = body.get("mean_abs_diff_years")
        if isinstance(diff, int | float) and not isinstance(diff, bool):
            out.diff_sum += float(diff)
            out.diff_events += 1
    return out


def violations(summary: ShadowSummary, bounds: ShadowBounds) -> list[str]:
    """Each bound the summary breaks, as a sentence; empty when the shadow run is acceptable."""
    problems = []
    if summary.events < max(1, bounds.min_events):
        problems.append(
            f"shadow scored {summary.events} events of {summary.model_version} in the window; "
            f"at least {max(1, bounds.min_events)} are needed"
        )
        return problems
    checks = (
        ("action change rate", summary.action_change_rate, bounds.max_action_change_rate),
        ("new-ALLOW rate", summary.new_allow_rate, bounds.max_new_allow_rate),
        ("mean |difference| (years)", summary.mean_abs_diff_years, bounds.max_mean_abs_diff_years),
    )
    for name, value, limit in checks:
        if value is not None and value > limit:
            problems.append(f"shadow {name} {value:.4g} exceeds the bound {limit:.4g}")
    return problems


def read_window(
    settings: Settings, topic: str, *, window_s: float, now: float | None = None, group: str = "agegate-model-promote"
) -> tuple[float, float, Iterator[tuple[float, bytes]]]:
    """(since, until, records) of the shadow topic; the message timestamp places a record in time."""
    from stream.adapters.topic_reader import read_to_end

    until = time.time() if now is None else now
    since = until - window_s

    def records() -> Iterator[tuple[float, bytes]]:
        for m in read_to_end(settings, topic, group=group):
            value = m.value()
            _, ts_ms = m.timestamp()
            if value is not None and ts_ms is not None and ts_ms > 0:
                yield ts_ms / 1000.0, value

    return since, until, records()
