"""The worker's faust app class: faust's aiokafka transport, with the Kafka fetch sized for batches.

faust builds its aiokafka consumer with `fetch_min_bytes=1` and `fetch_max_wait_ms=1500` fixed and
offers no setting for either. With fetch_min_bytes=1 the broker answers every fetch as soon as one
message is there, so under a steady moderate load the consumer thread and the broker trade a
request for every few events, and the worker takes its input a few events at a time. The worker's
consumer instead asks the broker to wait for AGEGATE_FETCH_MIN_BYTES or AGEGATE_FETCH_MAX_WAIT_MS,
whichever comes first: at most that wait is added to an event's latency, and at idle the consumer
makes one fetch per wait.

The workaround (held to by tests/unit/test_faust_app.py, which fails if a faust or aiokafka upgrade
moves what it relies on): the consumer thread's `_create_worker_consumer` builds the consumer as
faust does, then sets the two values aiokafka's `AIOKafkaConsumer.start()` passes to its fetcher.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


def app_class(fetch_min_bytes: int, fetch_max_wait_ms: int) -> type[faust.App]:
    """A faust.App whose worker consumer fetches at least `fetch_min_bytes` or waits `fetch_max_wait_ms`."""

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_min_bytes = fetch_min_bytes
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer

    class App(faust.App):
        def _new_transport(self) -> Any:
            return Transport(self.conf.broker_consumer, self)

    return App
