"""Waiting out an outage in place: one call when the dependency is up, retries (counted) while it is
down, anything else raised at once."""

from __future__ import annotations

import pytest
from tenacity import wait_none

from stream import metrics
from stream.errors import DependencyUnavailable
from stream.pipeline.retry import until_available


def _retries(dependency: str) -> float:
    return metrics.REGISTRY.get_sample_value("agegate_retries_total", {"dependency": dependency}) or 0.0


def _down(dependency: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("agegate_dependency_down", {"dependency": dependency})


class Flaky:
    def __init__(self, outages: int, error: Exception | None = None) -> None:
        self.outages = outages
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.calls <= self.outages:
            raise DependencyUnavailable("redis: connection refused")
        return "ok"


async def test_an_available_dependency_is_called_once_and_counts_no_retry() -> None:
    before = _retries("t-up")
    fn = Flaky(outages=0)
    assert await until_available(fn, dependency="t-up", wait=wait_none()) == "ok"
    assert fn.calls == 1
    assert _retries("t-up") == before


async def test_an_outage_is_retried_until_it_ends_and_each_retry_counted() -> None:
    before = _retries("t-down")
    fn = Flaky(outages=3)
    assert await until_available(fn, dependency="t-down", wait=wait_none()) == "ok"
    assert fn.calls == 4
    assert _retries("t-down") == before + 3
    assert _down("t-down") == 0  # reported up again


async def test_other_errors_are_not_retried() -> None:
    fn = Flaky(outages=0, error=ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        await until_available(fn, dependency="t-bug", wait=wait_none())
    assert fn.calls == 1
