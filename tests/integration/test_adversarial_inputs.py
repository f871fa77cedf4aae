"""Inputs that must not buy an ALLOW or stop the worker, through the real worker, Kafka and Redis.

Sideways child faces (EXIF orientation), compressed topics (every codec Kafka offers), events with
far too many frames, a DEBUG-level worker log, and a worker started before Kafka answers.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.testing import encode_with_orientation, synthetic_face
from stream.adapters.codec import AvroCodec
from stream.adapters.topic_reader import read_to_end
from stream.adapters.topics import topic_name
from stream.config import Settings, load_settings
from stream.core.subjects import UPLOAD
from stream.tools import events
from tests.support.worker_harness import OutputReader, WorkerProcess, free_port, fresh_settings, produce_raw, worker_env

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")
NOW = 1_790_000_000.0


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str) -> Settings:
    return fresh_settings(kafka_bootstrap, "a")


def _upload(user: str, k: int, frames: list[dict[str, Any]], surface: str = "adult_content") -> bytes:
    record = events.upload(user, at=NOW + k, surface=surface, jurisdiction="DEFAULT", frames=frames)
    return AvroCodec().encode(UPLOAD, record)


def _face_frames(age: float, seed: int, orientation: int, n: int = 2) -> list[dict[str, Any]]:
    return [
        events.inline_frame(
            f"f{j}", encode_with_orientation(synthetic_face(age, seed=seed * 10 + j), orientation, quality=92)
        )
        for j in range(n)
    ]


@pytest.fixture(scope="module")
def run(
    settings: Settings, redis_url: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One worker at DEBUG level with a frame cap of 16 takes every adversarial input of this module."""
    tmp = tmp_path_factory.mktemp("adversarial")
    env = worker_env(
        settings,
        model=tiny_model,
        redis_url=redis_url,
        redis_prefix=f"adv{uuid.uuid4().hex[:6]}",
        AGEGATE_LOG_LEVEL="DEBUG",
        AGEGATE_MAX_FRAMES_PER_EVENT="16",
    )
    worker = WorkerProcess(env, tmp / "worker.log").start()
    uploads = topic_name("uploads", settings)
    produced: dict[str, list[str]] = {}  # scenario -> idempotency keys
    users: dict[str, str] = {}  # idempotency key -> user id
    try:
        worker.wait_ready()
        # Child faces (8-10) stored sideways, four events each, on adult content: never ALLOW.
        for orientation in (6, 8):
            records: list[tuple[bytes | None, bytes | None]] = []
            for child in range(5):
                user = f"sideways{orientation}-{child}-{uuid.uuid4().hex[:6]}"
                for k in range(4):
                    records.append(
                        (user.encode(), _upload(user, k, _face_frames(8 + child % 3, child * 7 + k, orientation)))
                    )
            offsets = produce_raw(settings, uploads, records, partition=orientation)
            keys = [f"{uploads}/{orientation}/{o}" for o in offsets]
            produced[f"orientation{orientation}"] = keys
            users |= {key: (r[0] or b"").decode() for key, r in zip(keys, records, strict=True)}
        # Valid events compressed with every codec, each into its own partition.
        for p, codec in enumerate(CODECS):
            records = []
            for i in range(6):
                user = f"{codec}-{i}-{uuid.uuid4().hex[:6]}"
                records.append((user.encode(), _upload(user, i, _face_frames(40, i, 1), surface="profile_photo")))
            offsets = produce_raw(settings, uploads, records, partition=p, compression=codec)
            keys = [f"{uploads}/{p}/{o}" for o in offsets]
            produced[codec] = keys
            users |= {key: (r[0] or b"").decode() for key, r in zip(keys, records, strict=True)}
        # One event with 200 frames.
        user = f"many-frames-{uuid.uuid4().hex[:6]}"
        frames = [
            events.inline_frame(f"f{j}", encode_with_orientation(synthetic_face(35, seed=j), 1)) for j in range(200)
        ]
        (offset,) = produce_raw(settings, uploads, [(user.encode(), _upload(user, 0, frames))], partition=9)
        produced["200_frames"] = [f"{uploads}/9/{offset}"]
        users[produced["200_frames"][0]] = user
        reader = OutputReader(settings)
        try:
            everything = [k for keys in produced.values() for k in keys]
            outputs = reader.poll_until(everything, timeout=300)
        finally:
            reader.close()
        yield {"outputs": outputs, "produced": produced, "users": users, "worker": worker}
    finally:
        worker.stop()


@pytest.mark.parametrize("orientation", [6, 8])
def test_child_faces_stored_sideways_are_never_allowed_on_adult_content(run: dict[str, Any], orientation: int) -> None:
    keys = run["produced"][f"orientation{orientation}"]
    decisions = run["outputs"].decisions
    assert set(keys) <= set(decisions), "every sideways event is decided"
    for key in keys:
        (decision,) = decisions[key]
        assert decision["surface"] == "adult_content"
        assert decision["evidence"]["frames_scored"] == 2
        assert decision["action"] != "ALLOW", decision
        assert decision["evidence"]["age_mean"] < 18, decision["evidence"]  # read as a minor, not turned


@pytest.mark.parametrize("codec", CODECS)
def test_events_compressed_with_every_codec_are_decided(run: dict[str, Any], codec: str) -> None:
    keys = run["produced"][codec]
    decisions = run["outputs"].decisions
    for key in keys:
        (decision,) = decisions[key]
        assert decision["user_id"] == run["users"][key]
        assert decision["evidence"]["frames_scored"] == 2
    assert not set(keys) & set(run["outputs"].dead_letters)


def test_an_event_with_200_frames_scores_only_the_cap(run: dict[str, Any]) -> None:
    (key,) = run["produced"]["200_frames"]
    (decision,) = run["outputs"].decisions[key]
    assert decision["evidence"]["frames_scored"] == 16
    assert decision["evidence"]["frames_failed"] == 184
    assert "frames_over_limit" in decision["reason_codes"]
    samples = dict(run["worker"].metric_samples("agegate_frame_errors_total"))
    assert samples.get('{reason="frames_over_limit"}') == 184


def test_a_debug_level_worker_log_holds_no_user_id(run: dict[str, Any]) -> None:
    worker: WorkerProcess = run["worker"]
    text = worker.log_path.read_text(errors="replace")
    assert "model loaded" in text  # the worker's own log, written at DEBUG level
    leaked = [user for user in set(run["users"].values()) if user in text]
    assert leaked == []


def test_confluent_readers_read_every_codec(settings: Settings, run: dict[str, Any]) -> None:
    """diff, dead-letter listing/redrive (stream/adapters/topic_reader.py) and replay use librdkafka: every codec."""
    uploads = topic_name("uploads", settings)
    seen = {
        f"{m.topic()}/{m.partition()}/{m.offset()}": m.key()
        for m in read_to_end(settings, uploads, group=f"reader-{uuid.uuid4().hex[:6]}")
    }
    for codec in CODECS:
        for key in run["produced"][codec]:
            assert seen[key] == run["users"][key].encode()


class _LateProxy:
    """A TCP forwarder to the broker that starts listening only when told: Kafka 'comes up' later."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self._server: socket.socket | None = None

    def open(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def test_worker_waits_for_kafka_at_start_then_decides(
    settings: Settings, redis_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    proxy = _LateProxy(settings.kafka_bootstrap_servers.split(",")[0])
    late = load_settings(
        environ={},
        kafka_bootstrap_servers=f"127.0.0.1:{proxy.port}",
        topic_prefix=settings.topic_prefix,
        consumer_group=f"late{uuid.uuid4().hex[:6]}",
    )
    env = worker_env(late, model=tiny_model, redis_url=redis_url, redis_prefix=f"late{uuid.uuid4().hex[:6]}")
    worker = WorkerProcess(env, tmp_path / "late.log").start()
    try:
        deadline = time.monotonic() + 120
        body: dict[str, Any] = {}
        while time.monotonic() < deadline and not body:
            assert worker.proc is not None
            assert worker.proc.poll() is None, worker.tail()  # waiting, not exiting
            try:
                status, text = worker.get("/readyz")
                if status == 503:
                    body = json.loads(text)
            except OSError:
                time.sleep(0.2)  # web port not bound yet; polling, bounded by the deadline
        assert body == {"ready": False, "kafka_reachable": False}
        assert worker.get("/healthz")[0] == 200
        deadline = time.monotonic() + 60
        while "Kafka unreachable" not in worker.tail(200) and time.monotonic() < deadline:
            time.sleep(0.2)  # polling the log, bounded
        assert '"attempt": 1' in worker.tail(200)
        proxy.open()
        worker.wait_ready(timeout=180)
        user = f"late-{uuid.uuid4().hex[:6]}"
        uploads = topic_name("uploads", settings)
        (offset,) = produce_raw(
            settings, uploads, [(user.encode(), _upload(user, 0, _face_frames(40, 1, 1)))], partition=11
        )
        reader = OutputReader(settings)
        try:
            outputs = reader.poll_until([f"{uploads}/11/{offset}"], timeout=120)
        finally:
            reader.close()
        assert f"{uploads}/11/{offset}" in outputs.decisions
    finally:
        worker.stop()
        proxy.close()
