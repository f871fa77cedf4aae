"""deploy/local/infra.sh on its failure paths: a clear message, a non-zero exit, nothing left running."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.infra import INFRA, redis_cluster_ready, registry_reachable

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def isolated_env(tmp_path: Path) -> dict[str, str]:
    """Other ports and a private state folder; the resolved-jar cache is shared when present."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "REDIS_CLUSTER_URL", "SCHEMA_REGISTRY_URL"}
    }
    env |= {
        "AGEGATE_KAFKA_PORT": str(free_port()),
        "AGEGATE_KAFKA_CONTROLLER_PORT": str(free_port()),
        "AGEGATE_REDIS_PORT": str(free_port()),
        "AGEGATE_REDIS_CLUSTER_PORT": str(free_port()),
        "AGEGATE_REDIS_CLUSTER_BUS_PORT": str(free_port()),
        "AGEGATE_REGISTRY_PORT": str(free_port()),
        "AGEGATE_STATE_DIR": str(tmp_path / "state"),
    }
    return env


def infra(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INFRA), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_redis_port_taken_by_someone_else(isolated_env: dict[str, str], occupied_port: int) -> None:
    isolated_env["AGEGATE_REDIS_PORT"] = str(occupied_port)
    result = infra(isolated_env, "up", "redis")
    assert result.returncode != 0
    assert f"port {occupied_port} is already in use" in result.stderr
    assert "AGEGATE_REDIS_PORT" in result.stderr


def test_kafka_port_taken_leaves_nothing_started(isolated_env: dict[str, str], occupied_port: int) -> None:
    isolated_env["AGEGATE_KAFKA_PORT"] = str(occupied_port)
    result = infra(isolated_env, "up")
    assert result.returncode != 0
    assert "already in use" in result.stderr
    # Redis and the Redis Cluster came up first in this call; the failed Kafka start takes them down again.
    assert not port_open(int(isolated_env["AGEGATE_REDIS_PORT"]))
    assert not port_open(int(isolated_env["AGEGATE_REDIS_CLUSTER_PORT"]))
    status = infra(isolated_env, "status").stdout
    assert "redis  stopped" in status
    assert "redis-cluster  stopped" in status


def test_java_missing(isolated_env: dict[str, str], tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed", "awk", "cat", "tail", "mkdir", "rm", "seq", "sleep", "dirname"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    isolated_env["PATH"] = str(bin_dir)
    result = infra(isolated_env, "up", "kafka")
    assert result.returncode != 0
    assert "Java is not installed" in result.stderr


def test_maven_resolution_failing(isolated_env: dict[str, str], tmp_path: Path) -> None:
    isolated_env |= {"AGEGATE_KAFKA_VERSION": "0.0.0-does-not-exist", "AGEGATE_CACHE_DIR": str(tmp_path / "cache")}
    result = infra(isolated_env, "up", "kafka")
    assert result.returncode != 0
    assert "Maven could not resolve org.apache.kafka:kafka_2.13:0.0.0-does-not-exist" in result.stderr
    assert not (tmp_path / "cache" / "kafka-0.0.0-does-not-exist" / "libs").exists()  # no half cache


def test_broker_that_never_becomes_ready_is_stopped(isolated_env: dict[str, str]) -> None:
    isolated_env["AGEGATE_KAFKA_START_TIMEOUT"] = "0"
    result = infra(isolated_env, "up", "kafka")
    assert result.returncode != 0
    assert "did not answer a metadata request" in result.stderr
    assert not port_open(int(isolated_env["AGEGATE_KAFKA_PORT"]))
    assert "kafka  stopped" in infra(isolated_env, "status").stdout


def test_up_twice_then_down_stops_exactly_what_up_started(isolated_env: dict[str, str]) -> None:
    first = infra(isolated_env, "up", "redis")
    assert first.returncode == 0, first.stderr
    port = int(isolated_env["AGEGATE_REDIS_PORT"])
    assert port_open(port)
    second = infra(isolated_env, "up", "redis")
    assert second.returncode == 0
    assert "already running" in second.stdout
    down = infra(isolated_env, "down", "redis")
    assert "stopped" in down.stdout
    assert not port_open(port)


def test_external_services_are_never_started(isolated_env: dict[str, str]) -> None:
    isolated_env |= {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9092",
        "REDIS_URL": "redis://redis.example:6379/0",
        "REDIS_CLUSTER_URL": "redis://redis-cluster.example:6379/0",
    }
    result = infra(isolated_env, "up")
    assert result.returncode == 0
    assert "kafka: external" in result.stdout
    assert "redis: external, not started" in result.stdout
    assert "redis-cluster: external, not started" in result.stdout
    assert not port_open(int(isolated_env["AGEGATE_REDIS_PORT"]))
    assert not port_open(int(isolated_env["AGEGATE_REDIS_CLUSTER_PORT"]))


def test_redis_cluster_up_serves_every_slot_then_down(isolated_env: dict[str, str]) -> None:
    first = infra(isolated_env, "up", "redis-cluster")
    assert first.returncode == 0, first.stderr
    port = int(isolated_env["AGEGATE_REDIS_CLUSTER_PORT"])
    url = f"redis://127.0.0.1:{port}/0"
    assert redis_cluster_ready(url)
    info = redis.Redis.from_url(url).cluster("INFO")
    assert int(info["cluster_slots_assigned"]) == 16384
    again = infra(isolated_env, "up", "redis-cluster")
    assert again.returncode == 0
    assert "already running" in again.stdout
    assert "redis-cluster  running" in infra(isolated_env, "status").stdout
    assert "stopped" in infra(isolated_env, "down", "redis-cluster").stdout
    assert not port_open(port)


def test_redis_cluster_port_taken_by_someone_else(isolated_env: dict[str, str], occupied_port: int) -> None:
    isolated_env["AGEGATE_REDIS_CLUSTER_PORT"] = str(occupied_port)
    result = infra(isolated_env, "up", "redis-cluster")
    assert result.returncode != 0
    assert f"port {occupied_port} is already in use" in result.stderr
    assert "AGEGATE_REDIS_CLUSTER_PORT" in result.stderr


def test_registry_up_only_when_named_answers_the_confluent_api_and_down_all_stops_it(
    isolated_env: dict[str, str],
) -> None:
    port = int(isolated_env["AGEGATE_REGISTRY_PORT"])
    url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
    assert "registry  stopped" in infra(isolated_env, "status").stdout
    first = infra(isolated_env, "up", "registry")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"SCHEMA_REGISTRY_URL={url}" in first.stdout
    assert registry_reachable(url)
    again = infra(isolated_env, "up", "registry")
    assert again.returncode == 0
    assert "registry: already running" in again.stdout
    assert "registry  running" in infra(isolated_env, "status").stdout
    down = infra(isolated_env, "down")  # no service named: the registry is stopped too
    assert "registry: stopped" in down.stdout
    assert not port_open(port)


def test_registry_port_taken_by_someone_else(isolated_env: dict[str, str], occupied_port: int) -> None:
    isolated_env["AGEGATE_REGISTRY_PORT"] = str(occupied_port)
    result = infra(isolated_env, "up", "registry")
    assert result.returncode != 0
    assert f"port {occupied_port} is already in use" in result.stderr
    assert "AGEGATE_REGISTRY_PORT" in result.stderr


def test_external_registry_is_never_started(isolated_env: dict[str, str]) -> None:
    isolated_env["SCHEMA_REGISTRY_URL"] = "https://registry.example/apis/ccompat/v7"
    result = infra(isolated_env, "up", "registry")
    assert result.returncode == 0
    assert "registry: external" in result.stdout
    assert not port_open(int(isolated_env["AGEGATE_REGISTRY_PORT"]))
