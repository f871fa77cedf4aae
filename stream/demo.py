"""`agegate demo`: the main job end to end on local defaults.

Brings up the local Kafka and Redis, creates the topics, produces one event of each kind, and
prints them consumed and decoded. (The worker issue extends this to decisions.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from stream import events
from stream.codec import AvroCodec
from stream.config import load_settings
from stream.infra import infra_script
from stream.registry import FEEDBACK, SIGNUP, UPLOAD
from stream.topics import TopicAdmin, topic_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-infra", action="store_true", help="do not run deploy/local/infra.sh up")


def _printable(record: dict[str, Any]) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        if isinstance(value, bytes):
            return f"<{len(value)} bytes>"
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value if isinstance(value, int | float | str | bool | type(None)) else str(value)

    return {k: clean(v) for k, v in record.items()}


def run(args: argparse.Namespace) -> int:
    if not args.no_infra and subprocess.call(["bash", str(infra_script()), "up"]) != 0:
        return 1
    settings = load_settings()
    for name, outcome in TopicAdmin(settings).create():
        print(f"topic {name}: {outcome}")
    codec = AvroCodec()
    producer = Producer(settings.kafka_client_config() | {"enable.idempotence": True})
    now = time.time()
    user = f"demo-{uuid.uuid4().hex[:8]}"
    samples = [
        ("signups", SIGNUP, events.signup(user, at=now, declared_age=21)),
        ("uploads", UPLOAD, events.upload(user, at=now, surface="profile_photo")),
        ("feedback", FEEDBACK, events.feedback(user, at=now, verified_age=21.4)),
    ]
    positions = {}
    for role, subject, record in samples:
        done: dict[str, Any] = {}

        def remember(err: Any, msg: Any, d: dict[str, Any] = done) -> None:
            d.update(err=err, msg=msg)

        producer.produce(
            topic_name(role, settings),
            codec.encode(subject, record),
            key=user.encode(),
            on_delivery=remember,
        )
        producer.flush(30)
        if done.get("err") or "msg" not in done:
            print(f"produce to {role} failed: {done.get('err')}", file=sys.stderr)
            return 1
        msg = done["msg"]
        positions[role] = (msg.topic(), msg.partition(), msg.offset())
    consumer = Consumer(
        settings.kafka_client_config()
        | {"group.id": f"agegate-demo-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}
    )
    try:
        for role, (topic, partition, offset) in positions.items():
            consumer.assign([TopicPartition(topic, partition, offset)])
            msg = consumer.poll(30)
            if msg is None or msg.error():
                print(f"consume from {topic} failed: {msg.error() if msg else 'timeout'}", file=sys.stderr)
                return 1
            decoded = codec.decode(msg.value())
            print(f"{role}: {topic}[{partition}]@{offset} schema {decoded.schema_id} {decoded.subject}")
            print("  " + json.dumps(_printable(decoded.record)))
    finally:
        consumer.close()
    return 0
