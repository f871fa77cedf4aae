"""The online join and rolling metrics without Kafka: hand-built decisions and verified ages."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from stream.core.belief import YEAR_S
from stream.tools.online_metrics import DAY_S, DecisionFact, Exporter, OnlineMetrics, summarize

T0 = 1_700_000_000.0


def decision(
    user: str, est: float | None, action: str, t: float = T0, key: str | None = None, verified: bool = False
) -> DecisionFact:
    return DecisionFact(key or f"{user}@{t}", user, t, "DEFAULT", "adult_content", action, est, 18.0, verified)


def populated() -> OnlineMetrics:
    m = OnlineMetrics()  # drift windows (1000) stay unfilled: no PSI yet
    m.add_decision(decision("u1", 20.0, "ALLOW"))
    m.add_decision(decision("u1", 20.0, "ALLOW"))  # redelivered: same key, counted once
    m.add_decision(decision("u2", 16.0, "BLOCK"))
    m.add_decision(decision("u4", None, "REQUIRE_VERIFICATION"))  # no estimate: not a model outcome
    m.add_decision(decision("u5", 25.0, "ALLOW", verified=True))  # verified belief: already the truth
    assert m.add_feedback("u1", 17.0, T0) != []  # u1 was 17: an under-age ALLOW, error +3
    # two days later u2 is verified; at decision time they were 19.0: a false rejection, error -3
    assert m.add_feedback("u2", 19.0 + 2 * DAY_S / YEAR_S, T0 + 2 * DAY_S)
    m.add_feedback("u3", 30.0, T0 + 10)  # feedback first ...
    assert len(m.add_decision(decision("u3", 18.0, "REQUIRE_VERIFICATION"))) == 1  # ... joined on arrival
    assert m.add_decision(decision("u1", 21.0, "ALLOW", t=T0 + 100)) == []  # after the verification: waits
    return m


def test_join_by_hand() -> None:
    snap = populated().snapshot()
    o = snap["overall"]
    assert snap["joined_total"] == 3
    assert o["n"] == 3
    assert o["mae"] == pytest.approx((3 + 3 + 12) / 3)
    assert o["mean_signed_error"] == pytest.approx((3 - 3 - 12) / 3)
    assert o["under_age_pass_rate"] == 1.0
    assert o["n_under_age"] == 1
    assert o["false_rejection_rate"] == 1.0
    assert o["n_near_threshold"] == 1
    assert o["fallback_rate"] == pytest.approx(1 / 3)
    assert o["action_rates"] == pytest.approx({"ALLOW": 1 / 3, "BLOCK": 1 / 3, "REQUIRE_VERIFICATION": 1 / 3})
    assert set(snap["cohorts"]) == {"DEFAULT/adult_content"}
    assert snap["by_age_band"]["25-29"] == {"n": 1, "mae": pytest.approx(12.0)}  # 30 less 10 s: still 29


def test_empty_summary_and_window_eviction() -> None:
    empty = summarize([])
    assert empty["n"] == 0
    assert empty["mae"] is None
    assert empty["under_age_pass_rate"] is None
    m = populated()
    m.add_decision(decision("late", 40.0, "ALLOW", t=T0 + 9.5 * DAY_S))
    m.add_feedback("late", 41.0, T0 + 9.5 * DAY_S)
    snap = m.snapshot()
    assert snap["overall"]["n"] == 1
    assert snap["overall"]["mae"] == pytest.approx(1.0)
    assert snap["joined_total"] == 4


def test_drift_alert() -> None:
    m = OnlineMetrics(reference_size=3, current_size=3, psi_alert=0.2)
    assert m.drift()["psi"] is None  # not enough data yet
    for i, age in enumerate([14.0, 19.0, 33.0, 14.5, 19.5, 33.5]):
        m.add_decision(decision(f"a{i}", age, "ALLOW"))
    stable = m.drift()
    assert stable["psi"] == pytest.approx(0.0)
    assert stable["alert"] is False
    for i in range(3):
        m.add_decision(decision(f"b{i}", 70.0, "ALLOW"))
    shifted = m.drift()
    assert shifted["psi"] > 0.2
    assert shifted["alert"] is True


def test_exporter_sets_gauges() -> None:
    registry = CollectorRegistry()
    Exporter(registry).update(populated().snapshot())
    overall = {"jurisdiction": "all", "surface": "all"}
    cohort = {"jurisdiction": "DEFAULT", "surface": "adult_content"}
    assert registry.get_sample_value("agegate_online_mae_years", overall) == pytest.approx(6.0)
    assert registry.get_sample_value("agegate_online_joined_decisions", cohort) == 3
    assert registry.get_sample_value("agegate_online_error_rate", {**cohort, "kind": "under_age_pass"}) == 1.0
    block = registry.get_sample_value("agegate_online_action_rate", {**overall, "action": "BLOCK"})
    assert block == pytest.approx(1 / 3)
    assert registry.get_sample_value("agegate_estimate_drift_alert") == 0.0
