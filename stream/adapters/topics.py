"""The one declaration of agegate's topics, and `agegate topics create|describe`.

Every topic is keyed by user id so one user's events stay ordered. Names are `topic_prefix` +
the declared suffix, so each environment (or test) gets its own set.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from stream.config import Settings, load_settings
from stream.core.subjects import DECISION, FEEDBACK, RETAINED_FRAME, SIGNUP, UPLOAD
from stream.errors import AgegateError, DependencyUnavailable

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    role: str  # stable logical name used in code
    suffix: str  # name after the environment prefix
    partitions: int
    retention_ms: int
    cleanup_policy: str
    value: str  # what the values are: an Avro subject, or "original bytes"
    doc: str


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("signups", "signups", 12, 7 * DAY_MS, "delete", SIGNUP, "new accounts"),
    TopicSpec("uploads", "uploads", 12, 7 * DAY_MS, "delete", UPLOAD, "uploads and surface uses"),
    TopicSpec("feedback", "age-feedback", 6, 30 * DAY_MS, "delete", FEEDBACK, "verified ages (ground truth)"),
    TopicSpec("decisions", "decisions", 12, 30 * DAY_MS, "delete", DECISION, "one decision per evaluated event"),
    TopicSpec("dead_letters", "dead-letters", 3, 30 * DAY_MS, "delete", "original bytes", "bad input, kept to redrive"),
    # Frames of consenting users, one record per frame (key [user, event, frame]) so compaction keeps
    # every frame and a tombstone erases one; retention comes from the settings (`declared`).
    TopicSpec(
        "retained_frames",
        "retained-frames",
        12,
        90 * DAY_MS,
        "compact,delete",
        RETAINED_FRAME,
        "consented frames kept for model improvement",
    ),
)
ROLES = {spec.role: spec for spec in TOPICS}


def declared(settings: Settings) -> tuple[TopicSpec, ...]:
    """The declarations with what configuration decides (the retained frames' retention)."""
    retention = int(settings.retained_frames_retention_days * DAY_MS)
    return tuple(dataclasses.replace(s, retention_ms=retention) if s.role == "retained_frames" else s for s in TOPICS)


def topic_name(role: str, settings: Settings) -> str:
    return settings.topic_prefix + ROLES[role].suffix


def topic_names(settings: Settings) -> dict[str, str]:
    return {spec.role: topic_name(spec.role, settings) for spec in TOPICS}


@dataclass(frozen=True, slots=True)
class TopicState:
    name: str
    declared: TopicSpec
    exists: bool
    partitions: int | None
    config: Mapping[str, str]

    def differences(self, replication: int) -> list[str]:
        if not self.exists:
            return ["missing"]
        diffs = []
        if self.partitions != self.declared.partitions:
            diffs.append(f"partitions {self.partitions} != declared {self.declared.partitions}")
        if self.config.get("retention.ms") != str(self.declared.retention_ms):
            diffs.append(f"retention.ms {self.config.get('retention.ms')} != declared {self.declared.retention_ms}")
        if self.config.get("cleanup.policy") != self.declared.cleanup_policy:
            diffs.append(
                f"cleanup.policy {self.config.get('cleanup.policy')} != declared {self.declared.cleanup_policy}"
            )
        return diffs


# The first metadata request answers at once when a broker is up; waiting longer only delays the
# "Kafka unreachable" line a person is waiting for.
METADATA_TIMEOUT_S = 10.0


class TopicAdmin:
    def __init__(self, settings: Settings, *, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.admin = AdminClient(settings.kafka_client_config())

    def describe(self) -> list[TopicState]:
        try:
            metadata = self.admin.list_topics(timeout=min(self.timeout_s, METADATA_TIMEOUT_S))
        except KafkaException as exc:
            raise DependencyUnavailable(
                f"Kafka at {self.settings.kafka_bootstrap_servers} did not answer within "
                f"{min(self.timeout_s, METADATA_TIMEOUT_S):g}s ({exc.args[0].str() if exc.args else exc})"
            ) from None
        states = []
        for spec in declared(self.settings):
            name = topic_name(spec.role, self.settings)
            meta = metadata.topics.get(name)
            if meta is None or meta.error is not None:
                states.append(TopicState(name, spec, False, None, {}))
                continue
            resource = ConfigResource(ResourceType.TOPIC, name)
            configs = self.admin.describe_configs([resource])[resource].result(timeout=self.timeout_s)
            states.append(TopicState(name, spec, True, len(meta.partitions), {k: v.value for k, v in configs.items()}))
        return states

    def create(self) -> list[tuple[str, str]]:
        """Create what is missing; never alters an existing topic (that needs a human). Idempotent."""
        results = []
        missing = [s for s in self.describe() if not s.exists]
        new = [
            NewTopic(
                s.name,
                num_partitions=s.declared.partitions,
                replication_factor=self.settings.topic_replication_factor,
                config={"retention.ms": str(s.declared.retention_ms), "cleanup.policy": s.declared.cleanup_policy},
            )
            for s in missing
        ]
        futures = self.admin.create_topics(new, operation_timeout=self.timeout_s) if new else {}
        for name, future in futures.items():
            try:
                future.result(timeout=self.timeout_s)
                results.append((name, "created"))
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):  # created concurrently by someone else
                    results.append((name, "exists"))
                else:
                    raise AgegateError(f"creating topic {name} failed: {exc}") from exc
        created = {name for name, _ in results}
        for state in self.describe():
            if state.name not in created:
                diffs = state.differences(self.settings.topic_replication_factor)
                results.append((state.name, "exists" if not diffs else "exists, differs: " + "; ".join(diffs)))
        return sorted(results)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=("create", "describe"), help="create: the missing topics; describe: compare with declarations"
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    admin = TopicAdmin(settings)
    # Kafka unreachable: DependencyUnavailable, one line and exit code 3 (stream/cli.py).
    if args.action == "create":
        for name, outcome in admin.create():
            print(f"{name:36} {outcome}")
        return 0
    states = admin.describe()
    print(f"{'topic':36} {'partitions':>10} {'retention.ms':>14} {'cleanup':>8}  status")
    ok = True
    for s in states:
        diffs = s.differences(settings.topic_replication_factor)
        ok &= not diffs
        parts = "-" if s.partitions is None else str(s.partitions)
        print(
            f"{s.name:36} {parts:>10} {s.config.get('retention.ms', '-'):>14} "
            f"{s.config.get('cleanup.policy', '-'):>8}  {'matches declaration' if not diffs else '; '.join(diffs)}"
        )
    return 0 if ok else 1
