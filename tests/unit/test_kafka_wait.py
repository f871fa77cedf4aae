"""The worker waits for Kafka at start instead of exiting, and says so on /readyz meanwhile."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

import pytest

from stream.adapters.kafka_wait import probe, wait_for_kafka
from stream.config import Settings, load_settings
from stream.errors import DependencyUnavailable
from stream.tools.localrun import free_port


def _closed_port_settings() -> Settings:
    # A port nothing listens on: the broker "is down".
    return load_settings(environ={}, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", web_port=free_port())


def test_probe_of_an_unreachable_broker_is_a_dependency_error() -> None:
    with pytest.raises(DependencyUnavailable, match="did not answer"):
        probe(_closed_port_settings(), timeout=1.0)


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_waiting_serves_not_ready_and_alive_until_kafka_answers() -> None:
    settings = _closed_port_settings()
    task = asyncio.create_task(wait_for_kafka(settings, max_wait_s=0.5))
    base = f"http://127.0.0.1:{settings.web_port}"
    try:
        deadline = asyncio.get_running_loop().time() + 60
        answer: tuple[int, dict[str, object]] | None = None
        while answer is None and asyncio.get_running_loop().time() < deadline:
            try:
                answer = await asyncio.to_thread(_get, base + "/readyz")
            except OSError:
                await asyncio.sleep(0.2)  # not serving until the first probe failed; bounded by the deadline
        assert answer == (503, {"ready": False, "kafka_reachable": False})
        assert (await asyncio.to_thread(_get, base + "/healthz"))[0] == 200
        assert not task.done()  # still waiting, never exiting
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The port is released for faust's own web server: binding it again succeeds.
    socket.create_server(("0.0.0.0", settings.web_port)).close()
