"""Running the real worker locally as a subprocess and reading what it emits.

Used by `agegate demo`, the benchmarks and the integration tests. Synchronisation is by observable
state, never by sleeping: /readyz answering 200, and every expected source offset having a
decision or a dead letter on the output topics.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from stream.adapters.codec import AvroCodec
from stream.adapters.confluent_registry import registry_from_settings
from stream.adapters.topics import topic_name
from stream.config import Settings
from stream.core.subjects import DECISION


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(settings: Settings, *, model: Path, redis_url: str, redis_prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGEGATE_")}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REDIS_URL": redis_url,
        "AGEGATE_TOPIC_PREFIX": settings.topic_prefix,
        "AGEGATE_CONSUMER_GROUP": settings.consumer_group,
        "AGEGATE_REDIS_PREFIX": redis_prefix,
        "AGEGATE_MODEL": str(model),
        "AGEGATE_WEB_PORT": str(free_port()),
        "AGEGATE_LOG_FORMAT": "json",
        "AGEGATE_INFERENCE_THREADS": "1",
        "AGEGATE_BATCH_MAX_WAIT_MS": "10",
        "PYTHONUNBUFFERED": "1",
        # The worker resolves schema ids through the same registry as the caller that produces and reads.
        "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": settings.schema_registry_basic_auth,
        "SCHEMA_REGISTRY_SSL_CAFILE": settings.schema_registry_ssl_cafile,
        "AGEGATE_SCHEMA_AUTO_REGISTER": str(settings.schema_auto_register).lower(),
        "AGEGATE_SCHEMA_SUBJECT_STRATEGY": settings.schema_subject_strategy,
        "AGEGATE_SCHEMA_COMPATIBILITY": settings.schema_compatibility,
    }
    return env | extra


@dataclass
class WorkerProcess:
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['AGEGATE_WEB_PORT']}"

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                status, _ = self.get("/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)  # polling an external process's readiness, bounded by the deadline
        raise AssertionError(f"worker not ready within {timeout}s:\n{self.tail()}")

    def metric_samples(self, name: str) -> list[tuple[str, float]]:
        """(labels, value) for every sample of a metric name (exact name, any labels)."""
        _, text = self.get("/metrics")
        samples = []
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series == name or series.startswith(name + "{"):
                samples.append((series[len(name) :], float(value)))
        return samples

    def metric(self, name: str) -> float:
        """Sum of a metric over all its label sets (0 when absent)."""
        return sum(value for _, value in self.metric_samples(name))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(line[:400] for line in text.splitlines()[-lines:])


@dataclass
class Outputs:
    decisions: dict[str, list[dict[str, Any]]]  # idempotency key -> decisions (duplicates possible)
    dead_letters: dict[str, list[dict[str, str]]]  # source key -> dead-letter headers

    def accounted(self) -> set[str]:
        return set(self.decisions) | set(self.dead_letters)


class OutputReader:
    """Reads decisions and dead letters from the beginning, incrementally."""

    def __init__(self, settings: Settings) -> None:
        self.codec = AvroCodec(registry_from_settings(settings))
        self.decisions_topic = topic_name("decisions", settings)
        self.dead_topic = topic_name("dead_letters", settings)
        self.consumer = Consumer(
            settings.kafka_client_config()
            | {
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([self.decisions_topic, self.dead_topic])
        self.outputs = Outputs({}, {})

    def poll_until(self, expected: Iterable[str], timeout: float, *, at_least: int | None = None) -> Outputs:
        wanted = set(expected)
        target = len(wanted) if at_least is None else at_least
        deadline = time.monotonic() + timeout
        found = self.outputs.accounted() & wanted  # kept up to date per message: reading stays linear
        while len(found) < target and time.monotonic() < deadline:
            msg = self.consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            source = self._keep(msg)
            if source in wanted:
                found.add(source)
        return self.outputs

    def _keep(self, msg: Any) -> str:
        """Store one output; returns the source record it answers (a decision's idempotency key)."""
        if msg.topic() == self.decisions_topic:
            record = self.codec.decode(msg.value(), DECISION).record
            self.outputs.decisions.setdefault(record["idempotency_key"], []).append(record)
            return str(record["idempotency_key"])
        raw_headers: list[tuple[str, bytes]] = msg.headers() or []
        headers = {k: v.decode() for k, v in raw_headers}
        headers["_key"] = (msg.key() or b"").decode(errors="replace")
        headers["_value_len"] = str(len(msg.value() or b""))
        source = f"{headers['source_topic']}/{headers['source_partition']}/{headers['source_offset']}"
        self.outputs.dead_letters.setdefault(source, []).append(headers)
        return source

    def close(self) -> None:
        self.consumer.close()
