from __future__ import annotations

from typing import Any

from stream.runners.diff import diff, render_table, window_filter
from stream.runners.replay import PartitionWindow


def d(key: str, action: str, jur: str = "DEFAULT", surface: str = "account_creation") -> dict[str, Any]:
    topic, p, o = key.split("/")
    return {"idempotency_key": key, "action": action, "jurisdiction": jur, "surface": surface, "user_id": "u",
            "event_id": "e", "source_topic": topic, "source_partition": int(p), "source_offset": int(o)}


def test_transition_matrix_by_jurisdiction_and_surface() -> None:
    recorded = [d("s/0/1", "ALLOW"), d("s/0/2", "ALLOW", "EU"), d("s/0/3", "BLOCK", surface="live_streaming"),
                d("s/0/4", "ALLOW"), d("s/0/9", "ALLOW")]
    replayed = [d("s/0/1", "BLOCK"), d("s/0/2", "ALLOW", "EU"), d("s/0/3", "RESTRICT", surface="live_streaming"),
                d("s/0/4", "BLOCK"), d("s/0/5", "ALLOW")]
    r = diff(replayed, recorded)
    assert (r["matched"], r["changed"], r["unchanged"], r["only_replayed"], r["only_recorded"]) == (4, 3, 1, 1, 1)
    assert r["matrix"] == {"ALLOW": {"ALLOW": 1, "BLOCK": 2}, "BLOCK": {"RESTRICT": 1}}
    assert r["by_jurisdiction"]["EU"] == {"ALLOW": {"ALLOW": 1}}
    assert r["by_surface"]["live_streaming"] == {"BLOCK": {"RESTRICT": 1}}
    assert r["by_jurisdiction_surface"]["DEFAULT/account_creation"] == {"ALLOW": {"BLOCK": 2}}
    assert [e["idempotency_key"] for e in r["examples"]["ALLOW->BLOCK"]] == ["s/0/1", "s/0/4"]


def test_a_redelivered_recorded_decision_counts_once() -> None:
    r = diff([d("s/0/1", "BLOCK")], [d("s/0/1", "ALLOW"), d("s/0/1", "ALLOW")])
    assert r["matched"] == 1
    assert r["matrix"] == {"ALLOW": {"BLOCK": 1}}


def test_table_shows_the_matrix_and_only_changed_slices() -> None:
    r = diff([d("s/0/1", "BLOCK"), d("s/0/2", "ALLOW", "EU")], [d("s/0/1", "ALLOW"), d("s/0/2", "ALLOW", "EU")])
    table = render_table(r)
    assert "changed 1" in table
    assert "jurisdiction DEFAULT" in table
    assert "jurisdiction EU" not in table  # nothing changed there
    assert "ALLOW->BLOCK: s/0/1" in table


def test_window_filter_keeps_only_events_inside_the_window() -> None:
    inside = window_filter([PartitionWindow("s", 0, 2, 4)])
    assert [inside(d(f"s/0/{o}", "ALLOW")) for o in range(6)] == [False, False, True, True, False, False]
    assert not inside(d("s/1/2", "ALLOW"))
