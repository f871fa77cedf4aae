"""Shared fixtures: real Kafka, Redis and Schema Registry (tests/support/infra.py), and per-test namespaces."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from stream.config import Settings, load_settings
from tests.support.infra import (
    delete_topics,
    kafka_service,
    redis_cluster_service,
    redis_service,
    registry_service,
    topic_names,
)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with ExitStack() as stack, kafka_service(stack) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with ExitStack() as stack, redis_service(stack) as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A Redis Cluster (locally one node owning all 16384 slots: the same CROSSSLOT rules)."""
    with redis_cluster_service() as url:
        yield url


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    """A real Confluent-compatible Schema Registry (locally Apicurio: `infra.sh up registry`)."""
    with registry_service() as url:
        yield url


@pytest.fixture(autouse=True)
def _topics_a_test_creates_are_deleted(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every integration test makes its own topics (a unique prefix); left behind, a suite run leaves
    thousands of partitions and the local broker runs out of heap. Topics of module-scoped fixtures
    exist before this runs, so they stay for the module's other tests."""
    if "kafka_bootstrap" not in request.fixturenames:
        yield
        return
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    before = topic_names(bootstrap)
    yield
    delete_topics(bootstrap, topic_names(bootstrap) - before)


@pytest.fixture
def unique_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, unique_id: str) -> Settings:
    """Settings whose topics (prefix) and consumer group belong to this test alone."""
    return load_settings(
        environ={},
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{unique_id}.",
        consumer_group=f"g{unique_id}",
    )


def _tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """Where a session's tiny model is trained: a fresh folder, or, for a developer's repeated runs,
    `$AGEGATE_TEST_MODEL_CACHE/<name>` (never set in CI, which always trains its own)."""
    cache = os.environ.get("AGEGATE_TEST_MODEL_CACHE")
    return Path(cache) / name if cache and not os.environ.get("CI") else tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained in seconds on synthetic faces (children vs adults clearly apart)."""
    from model.testing import train_tiny_checkpoint

    return train_tiny_checkpoint(_tiny_model_dir(tmp_path_factory, "tiny-model"))


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second small model (another seed): a shadow candidate that disagrees a little."""
    from model.testing import train_tiny_checkpoint

    return train_tiny_checkpoint(_tiny_model_dir(tmp_path_factory, "tiny-model-b"), seed=1)
