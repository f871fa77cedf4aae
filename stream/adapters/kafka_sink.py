"""Producing decisions and dead letters, awaited until Kafka acknowledges them.

confluent-kafka gives a delivery report per message; a background thread serves them and resolves
an asyncio future on the loop. A source offset is committed only after these futures resolve, which
is what makes delivery at-least-once end to end.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, Producer

from stream.config import Settings
from stream.errors import DependencyUnavailable

OutgoingMessage = tuple[str, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]
"""(topic, key, value, headers) of one message to produce."""


class KafkaSink:
    def __init__(self, settings: Settings) -> None:
        conf: dict[str, Any] = settings.kafka_client_config() | {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.timeout.ms": 120_000,
        }
        self._producer = Producer(conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kafka-sink", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        """Produce one message; returns (partition, offset) once Kafka has acknowledged it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, int]] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                exc = DependencyUnavailable(f"Kafka did not accept a message for {topic}: {err.str()}")
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, (msg.partition(), msg.offset()), None)

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=list(headers), on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then try again
                await asyncio.sleep(0.01)
        return await future

    async def send_all(self, messages: Sequence[OutgoingMessage]) -> None:
        """Produce a batch of (topic, key, value, headers); returns once Kafka has acknowledged every
        one. One future for the batch, settled from the delivery thread once by the last report (not
        one per message: a batch's sends are awaited once). The first failure is raised after all
        reports are in, so nothing is left unobserved."""
        if not messages:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        on_delivery = _BatchDelivery(len(messages), lambda exc: loop.call_soon_threadsafe(_settle_batch, future, exc))
        for topic, key, value, headers in messages:
            while True:
                try:
                    self._producer.produce(
                        topic, value=value, key=key, headers=list(headers), on_delivery=on_delivery.report
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain, then try again
                    await asyncio.sleep(0.01)
        await future

    def flush(self, timeout_s: float) -> int:
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout=5)


class _BatchDelivery:
    """Counts a batch's delivery reports; calls `done(first error or None)` once, after the last.

    Reports arrive on the delivery thread (and on whichever thread flushes at close), hence the lock."""

    def __init__(self, n: int, done: Callable[[Exception | None], object]) -> None:
        self._left = n
        self._error: Exception | None = None
        self._done = done
        self._lock = threading.Lock()

    def report(self, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            if err is not None and self._error is None:
                self._error = DependencyUnavailable(f"Kafka did not accept a message for {msg.topic()}: {err.str()}")
            self._left -= 1
            last = self._left == 0
        if last:
            self._done(self._error)


def _settle_batch(future: asyncio.Future[None], exc: Exception | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(None)


def _settle(future: asyncio.Future[tuple[int, int]], value: tuple[int, int] | None, exc: Exception | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    elif value is not None:
        future.set_result(value)
