"""Decision diff: replayed decisions joined with other decisions of the same events by idempotency key.

The answer to "what would this model or policy change?": a transition matrix of actions (before ->
after), overall and by jurisdiction and surface, with a few example event references per
transition so a reviewer can open the exact events. The join goes through SQLite on disk, so a
window of any size diffs in bounded memory; a key recorded twice (a redelivery) counts once.
Jurisdiction and surface are the replayed decision's (a policy change can re-map a jurisdiction).

Two comparisons, and why the causes are separated:
- against a *baseline replay* of the same window (same model and policy as production, same
  deterministic order): every change is the candidate's model or policy. Use this for a rollout.
- against the *recorded* decisions (what the live worker did): the live worker may have fused an
  event with frames of later events (a backlog consumed the topics at once) or seen a verification
  that happened later, while the replay merges by event time. Such a decision's inputs differ from
  the replay's, whatever the model or policy. Each changed decision is put in one cause:
  `inputs` (the evidence differs: observations fused or verified flag), else `model_or_policy`
  (model or policy version differs), else `unexplained` (same inputs and versions: time of judgement
  or arithmetic). Only `model_or_policy` changes measure the candidate.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from stream.adapters.codec import AvroCodec
from stream.adapters.confluent_registry import registry_from_settings
from stream.adapters.topic_reader import UnknownTopic, read_to_end
from stream.config import Settings
from stream.core.subjects import DECISION
from stream.errors import DecodeError

EXAMPLES_PER_TRANSITION = 5
CAUSES = ("model_or_policy", "inputs", "unexplained")
_COLUMNS = (
    "key TEXT PRIMARY KEY, action TEXT, jurisdiction TEXT, surface TEXT, user_id TEXT, event_id TEXT,"
    " observations INTEGER, verified INTEGER, model_version TEXT, policy_version TEXT"
)
# The cause of a changed decision (o: the other side, n: the replay), first match wins (module doc).
# A side without evidence (NULL) is not counted as differing.
_INPUTS_DIFFER = "(o.observations != n.observations OR o.verified != n.verified)"
_CAUSE_SQL = (
    f"CASE WHEN {_INPUTS_DIFFER} THEN 'inputs'"
    " WHEN o.model_version IS NOT n.model_version OR o.policy_version IS NOT n.policy_version"
    " THEN 'model_or_policy' ELSE 'unexplained' END"
)


class _Window(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...


def _row(d: Mapping[str, Any]) -> tuple[Any, ...]:
    ev = d.get("evidence") or {}
    obs, verified = ev.get("observations"), ev.get("verified")
    return (
        str(d["idempotency_key"]),
        str(d["action"]),
        str(d.get("jurisdiction") or ""),
        str(d.get("surface") or ""),
        str(d.get("user_id") or ""),
        str(d.get("event_id") or ""),
        None if obs is None else int(obs),
        None if verified is None else int(bool(verified)),
        d.get("model_version"),
        d.get("policy_version"),
    )


class DecisionJoin:
    """`replayed`: the replay under test; `recorded`: what it is compared with (recorded decisions, or a
    baseline replay: `against` names which, for the report)."""

    def __init__(self, path: str | Path = ":memory:", *, against: str = "recorded") -> None:
        if str(path) != ":memory:":
            Path(path).unlink(missing_ok=True)
        self.against = against
        self.db = sqlite3.connect(str(path))
        for side in ("replayed", "recorded"):
            self.db.execute(f"CREATE TABLE {side} ({_COLUMNS})")

    def _add(self, side: str, decisions: Iterable[Mapping[str, Any]]) -> int:
        n = 0
        insert = f"INSERT OR REPLACE INTO {side} VALUES (?,?,?,?,?,?,?,?,?,?)"
        batch: list[tuple[Any, ...]] = []
        for d in decisions:
            batch.append(_row(d))
            n += 1
            if len(batch) >= 1000:
                self.db.executemany(insert, batch)
                batch = []
        self.db.executemany(insert, batch)
        self.db.commit()
        return n

    def add_replayed(self, decisions: Iterable[Mapping[str, Any]]) -> int:
        return self._add("replayed", decisions)

    def add_recorded(self, decisions: Iterable[Mapping[str, Any]]) -> int:
        return self._add("recorded", decisions)

    def report(self, examples: int = EXAMPLES_PER_TRANSITION) -> dict[str, Any]:
        q = self.db.execute
        matched = q("SELECT COUNT(*) FROM replayed n JOIN recorded o USING (key)").fetchone()[0]
        only_replayed = q("SELECT COUNT(*) FROM replayed WHERE key NOT IN (SELECT key FROM recorded)").fetchone()[0]
        only_recorded = q("SELECT COUNT(*) FROM recorded WHERE key NOT IN (SELECT key FROM replayed)").fetchone()[0]
        rows = q(
            f"SELECT o.action, n.action, n.jurisdiction, n.surface, {_CAUSE_SQL}, COUNT(*) FROM replayed n"
            " JOIN recorded o USING (key) GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
        ).fetchall()
        matrix: dict[str, dict[str, int]] = {}
        by_cause: dict[str, dict[str, dict[str, int]]] = {c: {} for c in CAUSES}
        by_j: dict[str, dict[str, dict[str, int]]] = {}
        by_s: dict[str, dict[str, dict[str, int]]] = {}
        by_js: dict[str, dict[str, dict[str, int]]] = {}
        causes = dict.fromkeys(CAUSES, 0)
        for old, new, jur, surf, cause, count in rows:
            for m in (
                matrix,
                by_j.setdefault(jur, {}),
                by_s.setdefault(surf, {}),
                by_js.setdefault(f"{jur}/{surf}", {}),
            ):
                m.setdefault(old, {})
                m[old][new] = m[old].get(new, 0) + count
            if old != new:
                causes[cause] += count
                cell = by_cause[cause].setdefault(old, {})
                cell[new] = cell.get(new, 0) + count
        changed = sum(causes.values())
        inputs = q(
            "SELECT SUM(o.observations > n.observations), SUM(o.observations < n.observations),"
            " SUM(o.verified > n.verified), SUM(o.verified < n.verified), SUM(o.action != n.action),"
            f" COUNT(*) FROM replayed n JOIN recorded o USING (key) WHERE {_INPUTS_DIFFER}"
        ).fetchone()
        ex: dict[str, list[dict[str, str]]] = {}
        for old, new, key, jur, surf, user, event, cause in q(
            "SELECT o.action, n.action, key, n.jurisdiction, n.surface, n.user_id, n.event_id,"
            f" {_CAUSE_SQL} FROM replayed n JOIN recorded o USING (key) WHERE o.action != n.action"
            " ORDER BY 1, 2, key"
        ):
            lst = ex.setdefault(f"{old}->{new}", [])
            if len(lst) < examples:
                lst.append(
                    {
                        "idempotency_key": key,
                        "jurisdiction": jur,
                        "surface": surf,
                        "user_id": user,
                        "event_id": event,
                        "cause": cause,
                    }
                )
        return {
            "against": self.against,
            "matched": matched,
            "changed": changed,
            "unchanged": matched - changed,
            "only_replayed": only_replayed,
            "only_recorded": only_recorded,
            "causes": causes,
            "matrix_by_cause": by_cause,
            "inputs_differ": {
                "matched": inputs[5],
                "changed": inputs[4] or 0,
                "more_observations_before": inputs[0] or 0,
                "fewer_observations_before": inputs[1] or 0,
                "verified_only_before": inputs[2] or 0,
                "verified_only_replayed": inputs[3] or 0,
            },
            "matrix": matrix,
            "by_jurisdiction": by_j,
            "by_surface": by_s,
            "by_jurisdiction_surface": by_js,
            "examples": ex,
        }

    def close(self) -> None:
        self.db.close()


def diff(
    replayed: Iterable[Mapping[str, Any]], recorded: Iterable[Mapping[str, Any]], *, against: str = "recorded"
) -> dict[str, Any]:
    join = DecisionJoin(against=against)
    try:
        join.add_replayed(replayed)
        join.add_recorded(recorded)
        return join.report()
    finally:
        join.close()


def _matrix_table(title: str, matrix: Mapping[str, Mapping[str, int]], before: str = "recorded") -> list[str]:
    actions = sorted({a for a in matrix} | {b for row in matrix.values() for b in row})
    corner = f"{before} \\ replayed"
    width = max([len(corner), *map(len, actions)]) + 2
    lines = [title, corner.ljust(width) + "".join(a.rjust(width) for a in actions)]
    for old in actions:
        row = matrix.get(old, {})
        cells = "".join(
            (str(row.get(new, 0)) if old != new else f"({row.get(new, 0)})").rjust(width) for new in actions
        )
        lines.append(old.ljust(width) + cells)
    return lines


CAUSE_TEXT = {
    "model_or_policy": "by the model or policy (version differs, same inputs)",
    "inputs": "with different inputs (observations fused or verification seen differ: not the model or policy)",
    "unexplained": "with the same inputs and versions (time of judgement or arithmetic)",
}


def render_table(report: Mapping[str, Any]) -> str:
    """Readable: the counts by cause, the matrix of model or policy changes, the overall matrix
    (diagonal in parentheses), then only the slices that changed."""
    before = str(report.get("against", "recorded"))
    causes = report.get("causes", {})
    lines = [
        f"decisions matched {report['matched']}, changed {report['changed']}, "
        f"only in replay {report['only_replayed']}, only {before} {report['only_recorded']}",
        *[f"  {causes.get(c, 0):>6} changed {CAUSE_TEXT[c]}" for c in CAUSES],
    ]
    inputs = report.get("inputs_differ")
    if inputs and inputs["matched"]:
        lines.append(
            f"  inputs differ for {inputs['matched']} matched decisions ({inputs['changed']} changed): {before} fused"
            f" more observations {inputs['more_observations_before']}, fewer {inputs['fewer_observations_before']};"
            f" verified only {before} {inputs['verified_only_before']}, only replayed"
            f" {inputs['verified_only_replayed']}"
        )
    if before == "recorded" and causes.get("inputs"):
        lines.append("  for a rollout, diff the candidate against a baseline replay of the same window instead")
    by_cause = report.get("matrix_by_cause", {})
    for cause in CAUSES:
        if by_cause.get(cause):
            lines += ["", *_matrix_table(f"changed {CAUSE_TEXT[cause]}", by_cause[cause], before)]
    lines += ["", *_matrix_table("all", report["matrix"], before)]
    for group in ("by_jurisdiction", "by_surface"):
        for name, matrix in sorted(report[group].items()):
            if any(old != new and n for old, row in matrix.items() for new, n in row.items()):
                lines += ["", *_matrix_table(f"{group.removeprefix('by_')} {name or '(none)'}", matrix, before)]
    if report["examples"]:
        lines += ["", "examples"]
        for transition, refs in sorted(report["examples"].items()):
            lines.append(
                f"  {transition}: "
                + ", ".join(r["idempotency_key"] + (f" ({r['cause']})" if "cause" in r else "") for r in refs)
            )
    return "\n".join(lines) + "\n"


def decisions_from_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for line in f:
            obj = json.loads(line)
            if obj.get("kind") == "decision":
                yield obj["decision"]


def window_filter(windows: Sequence[_Window]) -> Callable[[Mapping[str, Any]], bool]:
    """Keeps recorded decisions whose source event is inside the replayed window."""
    ranges = {(w.topic, w.partition): (w.start, w.end) for w in windows}

    def inside(d: Mapping[str, Any]) -> bool:
        r = ranges.get((str(d.get("source_topic")), int(d.get("source_partition", -1))))
        return r is not None and r[0] <= int(d.get("source_offset", -1)) < r[1]

    return inside


def read_decision_topic(settings: Settings, topic: str, *, timeout_s: float = 30.0) -> Iterator[dict[str, Any]]:
    """Every decision on `topic` up to its end as of now (assigned, no group, nothing committed)."""
    codec = AvroCodec(registry_from_settings(settings))  # the ids the worker wrote: the configured registry's
    try:
        for m in read_to_end(settings, topic, group="agegate-diff-reader", timeout_s=timeout_s):
            value = m.value()
            with contextlib.suppress(DecodeError):  # not a decision: nothing to compare
                yield codec.decode(value if isinstance(value, bytes) else None, DECISION).record
    except UnknownTopic:
        return
