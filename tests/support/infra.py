"""Finding the real Kafka, Redis and Schema Registry for tests: the environment, testcontainers, or deploy/local.

Order: KAFKA_BOOTSTRAP_SERVERS / REDIS_URL when set; testcontainers when a Docker daemon answers;
otherwise deploy/local/infra.sh, which this module stops again at the end only if it started it.
The Redis Cluster (one node owning all slots) comes from REDIS_CLUSTER_URL or deploy/local only:
testcontainers has no cluster module, and the local node needs nothing but redis-server.
The Schema Registry comes from SCHEMA_REGISTRY_URL or deploy/local (`infra.sh up registry`: Apicurio).
When CI is set, a service that cannot be reached fails the run; it never becomes a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "deploy" / "local" / "infra.sh"
LOCAL_KAFKA = f"127.0.0.1:{os.environ.get('AGEGATE_KAFKA_PORT', '39092')}"
LOCAL_REDIS = f"redis://127.0.0.1:{os.environ.get('AGEGATE_REDIS_PORT', '36379')}/0"
LOCAL_REDIS_CLUSTER = f"redis://127.0.0.1:{os.environ.get('AGEGATE_REDIS_CLUSTER_PORT', '36380')}/0"
LOCAL_REGISTRY = f"http://127.0.0.1:{os.environ.get('AGEGATE_REGISTRY_PORT', '38081')}/apis/ccompat/v7"


def unavailable(message: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: integration tests must run, not skip)", pytrace=False)
    pytest.skip(message)


def kafka_reachable(bootstrap: str, timeout: float = 5.0) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout)
        return True
    except Exception:
        return False


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3).ping())
    except Exception:
        return False


def redis_cluster_ready(url: str) -> bool:
    """The node answers and says every slot is served (`cluster_state:ok`)."""
    import redis

    try:
        info = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3).cluster("INFO")
    except Exception:
        return False
    return isinstance(info, dict) and info.get("cluster_state") == "ok"


def registry_reachable(url: str) -> bool:
    """The registry answers a Confluent API request (list subjects)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    try:
        SchemaRegistryClient({"url": url, "timeout": 3, "max.retries": 0}).get_subjects()
        return True
    except Exception:
        return False


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def _local(service: str, address: str, reachable: Callable[[str], bool]) -> Iterator[str]:
    if reachable(address):  # already up (a previous `make infra-up`): use it, leave it running
        yield address
        return
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "REDIS_CLUSTER_URL", "SCHEMA_REGISTRY_URL"}
    }
    proc = subprocess.run(["bash", str(INFRA), "up", service], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not reachable(address):
        unavailable(f"local {service} could not be started by {INFRA}:\n{proc.stdout}{proc.stderr}")
    try:
        yield address
    finally:
        subprocess.run(["bash", str(INFRA), "down", service], capture_output=True, env=env)


@contextmanager
def kafka_service(stack: ExitStack) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        if not kafka_reachable(bootstrap, timeout=15):
            unavailable(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} does not answer a metadata request")
        yield bootstrap
    elif docker_answers():
        from testcontainers.kafka import KafkaContainer

        container = stack.enter_context(KafkaContainer().with_kraft())
        yield container.get_bootstrap_server()
    else:
        with _local("kafka", LOCAL_KAFKA, kafka_reachable) as bootstrap:
            yield bootstrap


@contextmanager
def redis_service(stack: ExitStack) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
        if not redis_reachable(url):
            unavailable("REDIS_URL does not answer PING")
        yield url
    elif docker_answers():
        from testcontainers.redis import RedisContainer

        container = stack.enter_context(RedisContainer())
        yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
    else:
        with _local("redis", LOCAL_REDIS, redis_reachable) as url:
            yield url


@contextmanager
def redis_cluster_service() -> Iterator[str]:
    if os.environ.get("REDIS_CLUSTER_URL"):
        url = os.environ["REDIS_CLUSTER_URL"]
        if not redis_cluster_ready(url):
            unavailable("REDIS_CLUSTER_URL does not answer CLUSTER INFO with cluster_state:ok")
        yield url
    else:
        with _local("redis-cluster", LOCAL_REDIS_CLUSTER, redis_cluster_ready) as url:
            yield url


@contextmanager
def registry_service() -> Iterator[str]:
    """A Confluent-compatible Schema Registry's URL (Apicurio's ccompat API when started locally)."""
    if os.environ.get("SCHEMA_REGISTRY_URL"):
        url = os.environ["SCHEMA_REGISTRY_URL"]
        if not registry_reachable(url):
            unavailable("SCHEMA_REGISTRY_URL does not answer GET /subjects")
        yield url
    else:
        with _local("registry", LOCAL_REGISTRY, registry_reachable) as url:
            yield url


def topic_names(bootstrap: str) -> set[str]:
    """The broker's topics (empty when it does not answer: cleanup must never fail a test)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)
    except KafkaException:
        return set()


def delete_topics(bootstrap: str, names: set[str]) -> None:
    """Delete these topics and wait for the broker to accept it (best effort, internal topics kept)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    names = {n for n in names if not n.startswith("_")}
    if not names:
        return
    # The client must outlive its futures: destroyed, it fails them ("Handle is terminating") or
    # leaves them unresolved, and the topics stay.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.delete_topics(sorted(names), operation_timeout=30)
    for name, future in futures.items():
        try:
            future.result(timeout=60)
        except (KafkaException, TimeoutError) as exc:
            # A broker slow to answer (a loaded CI machine) leaves the topic for later; cleanup
            # is housekeeping, and a test that passed must not fail in its teardown.
            warnings.warn(f"topic {name} not deleted: {exc!r}", stacklevel=2)
