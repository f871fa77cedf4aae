"""The worker's faust app asks the broker for batches: its aiokafka consumer's fetcher, once started
against the real broker, waits for AGEGATE_FETCH_MIN_BYTES or AGEGATE_FETCH_MAX_WAIT_MS. faust fixes
both values and has no setting for them (stream/runners/faust_app.py); this fails if an upgrade of
faust or aiokafka moves what the workaround relies on."""

from __future__ import annotations

import pytest

from stream.runners.faust_app import app_class

pytestmark = pytest.mark.integration


async def test_the_worker_consumer_fetches_with_the_configured_size_and_wait(
    kafka_bootstrap: str, unique_id: str
) -> None:
    app = app_class(fetch_min_bytes=12345, fetch_max_wait_ms=7)(f"g{unique_id}", broker=f"kafka://{kafka_bootstrap}")
    thread = app.consumer._thread  # type: ignore[attr-defined]  # the aiokafka driver's consumer
    consumer = thread._create_worker_consumer(app.transport)
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (12345, 7)
    await consumer.start()
    try:
        fetcher = consumer._fetcher
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (12345, 7)
    finally:
        await consumer.stop()


def test_faust_still_fixes_the_values_it_overrides() -> None:
    """If faust ever makes them settings, use those instead of this workaround."""
    import inspect

    from faust.transport.drivers import aiokafka as faust_aiokafka

    source = inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms=1500" in source
    assert "fetch_min_bytes" not in source
