"""Online metrics end to end on the real broker: decisions and verified ages in, metric values out."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, Producer

from stream.adapters.codec import AvroCodec
from stream.adapters.topics import TopicAdmin, topic_name
from stream.config import Settings
from stream.core.subjects import DECISION, FEEDBACK
from stream.tools.online_metrics import OnlineMetrics, consume

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def decision_record(user: str, estimate: float, action: str, offset: int) -> dict[str, object]:
    return {
        "decision_id": str(uuid.uuid4()),
        "idempotency_key": f"uploads/0/{offset}",
        "user_id": user,
        "event_id": str(uuid.uuid4()),
        "event_type": "UploadEvent",
        "source_topic": "uploads",
        "source_partition": 0,
        "source_offset": offset,
        "jurisdiction": "DEFAULT",
        "surface": "adult_content",
        "action": action,
        "reason_codes": ["estimated"],
        "evidence": {
            "age_mean": estimate,
            "age_std": 2.0,
            "observations": 2,
            "threshold": 18.0,
            "buffer": 2.0,
            "p_at_least_threshold": 0.5,
            "verified": False,
            "declared_age": None,
            "frames_scored": 1,
            "frames_failed": 0,
        },
        "model_version": "age_regressor@test",
        "policy_version": "test",
        "event_time": T0,
        "decided_at": T0,
    }


def feedback_record(user: str, age: float) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "user_id": user,
        "occurred_at": T0 + timedelta(hours=1),
        "verified_age": age,
        "method": "ID_CHECK",
        "jurisdiction": None,
    }


def test_decisions_joined_with_feedback(kafka_settings: Settings) -> None:
    TopicAdmin(kafka_settings).create()
    codec = AvroCodec()
    decisions, feedback = topic_name("decisions", kafka_settings), topic_name("feedback", kafka_settings)
    producer = Producer(kafka_settings.kafka_client_config())
    # (user, estimate, action, verified age): errors +3, -3, -2, +1 -> MAE 2.25, signed -0.25
    cases = [
        ("u1", 20.0, "ALLOW", 17.0),
        ("u2", 16.0, "BLOCK", 19.0),
        ("u3", 18.0, "REQUIRE_VERIFICATION", 20.0),
        ("u4", 31.0, "ALLOW", 30.0),
    ]
    for i, (user, est, action, _) in enumerate(cases):
        producer.produce(decisions, key=user, value=codec.encode(DECISION, decision_record(user, est, action, i)))
    producer.produce(decisions, key="u1", value=codec.encode(DECISION, decision_record("u1", 20.0, "ALLOW", 0)))
    producer.produce(decisions, key="junk", value=b"not avro")  # skipped, not fatal
    for user, _, _, age in cases:
        producer.produce(feedback, key=user, value=codec.encode(FEEDBACK, feedback_record(user, age)))
    assert producer.flush(30) == 0
    total = len(cases) * 2 + 2

    consumer = Consumer(
        {
            **kafka_settings.kafka_client_config(),
            "group.id": kafka_settings.consumer_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([decisions, feedback])
    state = OnlineMetrics()
    try:
        read = consume(
            consumer,
            codec,
            state,
            decisions_topic=decisions,
            feedback_topic=feedback,
            stop=threading.Event(),
            max_messages=total,
            idle_exit_s=60.0,
        )
    finally:
        consumer.close()
    assert read == total
    snap = state.snapshot()
    o = snap["overall"]
    one_hour = 1 / (365.25 * 24)  # verified an hour after the decision: the age then was an hour less
    assert snap["joined_total"] == 4  # the redelivered decision counted once
    assert o["mae"] == pytest.approx(2.25, abs=1e-3)
    assert o["mean_signed_error"] == pytest.approx(-0.25 + one_hour, abs=1e-6)
    assert o["under_age_pass_rate"] == 1.0
    assert o["n_under_age"] == 1
    assert o["false_rejection_rate"] == pytest.approx(0.5)  # u2 (19) blocked, u3 (20) sent to verification
    assert o["fallback_rate"] == pytest.approx(0.25)
    assert o["action_rates"] == pytest.approx({"ALLOW": 0.5, "BLOCK": 0.25, "REQUIRE_VERIFICATION": 0.25})
