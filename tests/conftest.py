"""Shared fixtures: the real Kafka broker and Redis (see tests/infra.py), and per-test namespaces."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from stream.config import Settings, load_settings
from tests.infra import kafka_service, redis_service


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with ExitStack() as stack, kafka_service(stack) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with ExitStack() as stack, redis_service(stack) as url:
        yield url


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


def _model_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """Where a tiny model is trained: AGEGATE_TEST_MODEL_CACHE/<name> when set (train_tiny_checkpoint
    reuses a valid checkpoint there, so runs on a busy machine skip retraining), else a fresh temp dir."""
    cache = os.environ.get("AGEGATE_TEST_MODEL_CACHE")
    return Path(cache) / name if cache else tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained in seconds on synthetic faces (children vs adults clearly apart)."""
    from model.testing import train_tiny_checkpoint

    return train_tiny_checkpoint(_model_dir(tmp_path_factory, "tiny-model"))


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second small model (another seed): a shadow candidate that disagrees a little."""
    from model.testing import train_tiny_checkpoint

    return train_tiny_checkpoint(_model_dir(tmp_path_factory, "tiny-model-b"), seed=1)
