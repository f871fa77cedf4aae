"""Waiting out a dependency outage in place: the batch is retried, never skipped or dead-lettered.

Redis (beliefs) and the schema registry (decoding an unknown id, encoding decisions) go down; the
events in flight are valid and must be decided once they are back. Retrying here keeps them in the
driver, so consumption pauses by backpressure alone; the worker never crash-loops on an outage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter
from tenacity.wait import wait_base

from stream import metrics
from stream.errors import DependencyUnavailable
from stream.log import get_logger

log = get_logger("agegate.pipeline")
T = TypeVar("T")

DEFAULT_WAIT = wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.2)


async def until_available(fn: Callable[[], Awaitable[T]], *, dependency: str, wait: wait_base = DEFAULT_WAIT) -> T:
    """`fn()`, retried with bounded exponential backoff for as long as it raises DependencyUnavailable."""
    try:
        return await fn()  # the common case costs one call: the retry machinery starts at the first outage
    except DependencyUnavailable as exc:
        seen: DependencyUnavailable | None = exc
    attempts = 0

    def waiting(attempt: int) -> None:
        metrics.DEPENDENCY_DOWN.labels(dependency).set(1)
        metrics.RETRIES.labels(dependency).inc()
        if attempt == 1 or attempt % 10 == 0:
            log.warning(f"{dependency} unavailable; consumption pauses while retrying", attempt=attempt)

    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(DependencyUnavailable),
        wait=wait,
        reraise=True,
        before_sleep=lambda state: waiting(state.attempt_number),
    ):
        with attempt:
            attempts += 1
            if seen is not None:  # the failure already met above is tenacity's first attempt
                failure, seen = seen, None
                raise failure
            result = await fn()
    metrics.DEPENDENCY_DOWN.labels(dependency).set(0)
    log.info(f"{dependency} reachable again; resuming", attempts=attempts)
    return result
