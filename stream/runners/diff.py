"""Decision diff: replayed decisions joined with recorded ones by idempotency key.

The answer to "what would this model or policy change?": a transition matrix of actions (recorded
-> replayed), overall and by jurisdiction and surface, with a few example event references per
transition so a reviewer can open the exact events. The join goes through SQLite on disk, so a
window of any size diffs in bounded memory; a key recorded twice (a redelivery) counts once.
Jurisdiction and surface are the replayed decision's (a policy change can re-map a jurisdiction).
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


class _Window(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...


def _row(d: Mapping[str, Any]) -> tuple[str, str, str, str, str, str]:
    return (str(d["idempotency_key"]), str(d["action"]), str(d.get("jurisdiction") or ""),
            str(d.get("surface") or ""), str(d.get("user_id") or ""), str(d.get("event_id") or ""))


class DecisionJoin:
    def __init__(self, path: str | Path = ":memory:") -> None:
        if str(path) != ":memory:":
            Path(path).unlink(missing_ok=True)
        self.db = sqlite3.connect(str(path))
        for side in ("replayed", "recorded"):
            self.db.execute(
                f"CREATE TABLE {side} (key TEXT PRIMARY KEY, action TEXT, jurisdiction TEXT, surface TEXT,"
                " user_id TEXT, event_id TEXT)"
            )

    def _add(self, side: str, decisions: Iterable[Mapping[str, Any]]) -> int:
        n = 0
        batch: list[tuple[str, ...]] = []
        for d in decisions:
            batch.append(_row(d))
            n += 1
            if len(batch) >= 1000:
                self.db.executemany(f"INSERT OR REPLACE INTO {side} VALUES (?,?,?,?,?,?)", batch)
                batch = []
        self.db.executemany(f"INSERT OR REPLACE INTO {side} VALUES (?,?,?,?,?,?)", batch)
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
            "SELECT o.action, n.action, n.jurisdiction, n.surface, COUNT(*) FROM replayed n JOIN recorded o"
            " USING (key) GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        ).fetchall()
        matrix: dict[str, dict[str, int]] = {}
        by_j: dict[str, dict[str, dict[str, int]]] = {}
        by_s: dict[str, dict[str, dict[str, int]]] = {}
        by_js: dict[str, dict[str, dict[str, int]]] = {}
        for old, new, jur, surf, count in rows:
            for m in (matrix, by_j.setdefault(jur, {}), by_s.setdefault(surf, {}),
                      by_js.setdefault(f"{jur}/{surf}", {})):
                m.setdefault(old, {})
                m[old][new] = m[old].get(new, 0) + count
        changed = sum(c for old, new, _, _, c in rows if old != new)
        ex: dict[str, list[dict[str, str]]] = {}
        for old, new, key, jur, surf, user, event in q(
            "SELECT o.action, n.action, key, n.jurisdiction, n.surface, n.user_id, n.event_id FROM replayed n"
            " JOIN recorded o USING (key) WHERE o.action != n.action ORDER BY 1, 2, key"
        ):
            lst = ex.setdefault(f"{old}->{new}", [])
            if len(lst) < examples:
                lst.append({"idempotency_key": key, "jurisdiction": jur, "surface": surf, "user_id": user,
                            "event_id": event})
        return {
            "matched": matched, "changed": changed, "unchanged": matched - changed,
            "only_replayed": only_replayed, "only_recorded": only_recorded,
            "matrix": matrix, "by_jurisdiction": by_j, "by_surface": by_s, "by_jurisdiction_surface": by_js,
            "examples": ex,
        }

    def close(self) -> None:
        self.db.close()


def diff(replayed: Iterable[Mapping[str, Any]], recorded: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    join = DecisionJoin()
    try:
        join.add_replayed(replayed)
        join.add_recorded(recorded)
        return join.report()
    finally:
        join.close()


def _matrix_table(title: str, matrix: Mapping[str, Mapping[str, int]]) -> list[str]:
    actions = sorted({a for a in matrix} | {b for row in matrix.values() for b in row})
    width = max([len("recorded \\ replayed"), *map(len, actions)]) + 2
    lines = [title, "recorded \\ replayed".ljust(width) + "".join(a.rjust(width) for a in actions)]
    for old in actions:
        row = matrix.get(old, {})
        cells = "".join((str(row.get(new, 0)) if old != new else f"({row.get(new, 0)})").rjust(width)
                        for new in actions)
        lines.append(old.ljust(width) + cells)
    return lines


def render_table(report: Mapping[str, Any]) -> str:
    """Readable: the overall matrix (diagonal in parentheses), then only the slices that changed."""
    lines = [
        f"decisions matched {report['matched']}, changed {report['changed']}, "
        f"only in replay {report['only_replayed']}, only recorded {report['only_recorded']}",
        "",
        *_matrix_table("all", report["matrix"]),
    ]
    for group in ("by_jurisdiction", "by_surface"):
        for name, matrix in sorted(report[group].items()):
            if any(old != new and n for old, row in matrix.items() for new, n in row.items()):
                lines += ["", *_matrix_table(f"{group.removeprefix('by_')} {name or '(none)'}", matrix)]
    if report["examples"]:
        lines += ["", "examples"]
        for transition, refs in sorted(report["examples"].items()):
            lines.append(f"  {transition}: " + ", ".join(r["idempotency_key"] for r in refs))
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
