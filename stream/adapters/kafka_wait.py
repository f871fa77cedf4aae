"""Waiting for Kafka before the worker starts, as it waits for its model.

faust exits when the brokers cannot be reached at start, and a pod that exits is restarted in a
crash loop with no word on why. Instead the worker probes the brokers with bounded exponential
backoff (logging each attempt) and serves /healthz (alive) and /readyz (503, `kafka_reachable`
false) on its web port meanwhile; faust takes the port over once Kafka answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from stream.config import Settings
from stream.errors import DependencyUnavailable
from stream.log import get_logger

log = get_logger("agegate.kafka_wait")
PROBE_TIMEOUT_S = 5.0


def probe(settings: Settings, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One metadata request to the brokers; DependencyUnavailable when none answers."""
    try:
        AdminClient(settings.kafka_client_config()).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise DependencyUnavailable(f"Kafka did not answer a metadata request: {exc}") from None


async def wait_for_kafka(settings: Settings, *, max_wait_s: float = 30.0) -> int:
    """Return once Kafka answers (the number of attempts it took); retries forever, each wait bounded."""
    from aiohttp import web
    from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"ready": False, "kafka_reachable": False}, status=503)

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner: Any = None
    attempts = 0
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(DependencyUnavailable),
            wait=wait_exponential_jitter(multiplier=1, max=max_wait_s),
            before_sleep=lambda s: log.error(
                "Kafka unreachable; the worker starts once it answers",
                error=str(s.outcome.exception()) if s.outcome else "",
                attempt=s.attempt_number,
                bootstrap=settings.kafka_bootstrap_servers,
            ),
        ):
            with attempt:
                attempts += 1
                await asyncio.to_thread(probe, settings)
            if attempt.retry_state.outcome is not None and attempt.retry_state.outcome.failed and runner is None:
                # Serve health only once waiting starts: the common case (Kafka up) binds nothing.
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "0.0.0.0", settings.web_port).start()
    finally:
        if runner is not None:
            await runner.cleanup()
    if attempts > 1:
        log.info("Kafka reachable; starting", attempts=attempts)
    return attempts
