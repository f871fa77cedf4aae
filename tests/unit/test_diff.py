from __future__ import annotations

from typing import Any

from stream.runners.diff import diff, render_table, window_filter
from stream.runners.replay import PartitionWindow


def d(key: str, action: str, jur: str = "DEFAULT", surface: str = "account_creation") -> dict[str, Any]:
    topic, p, o = key.split("/")
    return {
        "idempotency_key": key,
        "action": action,
        "jurisdiction": jur,
        "surface": surface,
        "user_id": "u",
        "event_id": "e",
        "source_topic": topic,
        "source_partition": int(p),
        "source_offset": int(o),
    }


def test_transition_matrix_by_jurisdiction_and_surface() -> None:
    recorded = [
        d("s/0/1", "ALLOW"),
        d("s/0/2", "ALLOW", "EU"),
        d("s/0/3", "BLOCK", surface="live_streaming"),
        d("s/0/4", "ALLOW"),
        d("s/0/9", "ALLOW"),
    ]
    replayed = [
        d("s/0/1", "BLOCK"),
        d("s/0/2", "ALLOW", "EU"),
        d("s/0/3", "RESTRICT", surface="live_streaming"),
        d("s/0/4", "BLOCK"),
        d("s/0/5", "ALLOW"),
    ]
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


def ev(
    key: str, action: str, *, obs: int = 2, verified: bool = False, model: str = "m1", policy: str = "p1"
) -> dict[str, Any]:
    return d(key, action) | {
        "evidence": {"observations": obs, "verified": verified},
        "model_version": model,
        "policy_version": policy,
    }


def test_changes_are_split_by_cause() -> None:
    """Recorded decisions that fused later frames or saw a later verification are not the candidate's doing."""
    recorded = [
        ev("s/0/1", "ALLOW", obs=3),  # the live worker fused a later event's frames
        ev("s/0/2", "ALLOW", verified=True),  # ...or saw a verification that came later
        ev("s/0/3", "ALLOW"),  # same inputs, the candidate's policy blocks
        ev("s/0/4", "ALLOW"),  # same inputs, same versions, still differs
        ev("s/0/5", "BLOCK", obs=4),  # inputs differ but the action does not
        ev("s/0/6", "ALLOW"),
    ]
    replayed = [
        ev("s/0/1", "REQUIRE_VERIFICATION", obs=2, policy="p2"),
        ev("s/0/2", "REQUIRE_VERIFICATION", policy="p2"),
        ev("s/0/3", "BLOCK", policy="p2"),
        ev("s/0/4", "REQUIRE_VERIFICATION"),
        ev("s/0/5", "BLOCK", obs=2, policy="p2"),
        ev("s/0/6", "ALLOW", policy="p2"),
    ]
    r = diff(replayed, recorded)
    assert r["changed"] == 4
    assert r["causes"] == {"inputs": 2, "model_or_policy": 1, "unexplained": 1}
    assert r["matrix_by_cause"]["inputs"] == {"ALLOW": {"REQUIRE_VERIFICATION": 2}}
    assert r["matrix_by_cause"]["model_or_policy"] == {"ALLOW": {"BLOCK": 1}}
    assert r["inputs_differ"] == {
        "matched": 3,
        "changed": 2,
        "more_observations_before": 2,
        "fewer_observations_before": 0,
        "verified_only_before": 1,
        "verified_only_replayed": 0,
    }
    assert {e["idempotency_key"]: e["cause"] for refs in r["examples"].values() for e in refs} == {
        "s/0/1": "inputs",
        "s/0/2": "inputs",
        "s/0/3": "model_or_policy",
        "s/0/4": "unexplained",
    }
    table = render_table(r)
    assert "2 changed with different inputs" in table
    assert "1 changed by the model or policy" in table
    assert "diff the candidate against a baseline replay" in table


def test_against_a_baseline_every_change_is_the_candidates() -> None:
    baseline = [ev("s/0/1", "ALLOW"), ev("s/0/2", "ALLOW")]
    candidate = [ev("s/0/1", "BLOCK", model="m2"), ev("s/0/2", "ALLOW", model="m2")]
    r = diff(candidate, baseline, against="baseline")
    assert r["causes"] == {"inputs": 0, "model_or_policy": 1, "unexplained": 0}
    table = render_table(r)
    assert "baseline \\ replayed" in table
    assert "only baseline 0" in table
    assert "baseline replay of the same window instead" not in table


def test_decisions_without_evidence_are_not_counted_as_differing_inputs() -> None:
    r = diff([ev("s/0/1", "BLOCK", policy="p2")], [d("s/0/1", "ALLOW")])
    assert r["causes"]["inputs"] == 0
    assert r["inputs_differ"]["matched"] == 0
