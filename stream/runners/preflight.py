"""What the worker checks before it joins the consumer group, and the topic check of its readiness.

A bad policy or setting found after the worker joined the group costs a rebalance for every other
worker, then a crash loop with the reason buried in the log. `preflight(settings)` finds them first
and raises one ConfigError listing every problem (`agegate worker` prints it as one line and exits
with code 2). What may fix itself stays a wait, not an error: a model file not there yet (a volume
still being filled) and Kafka not answering are retried by the worker, and missing topics keep
/readyz failing with the reason (`topics_ready`) until someone runs `agegate topics create`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from stream.config import Settings
from stream.core.policy import Policy, PolicyError, load_policy
from stream.errors import ConfigError
from stream.log import get_logger

log = get_logger("agegate.preflight")

DAY_S = 86400.0
SOURCE_ROLES = ("signups", "uploads", "feedback")
TOPIC_CHECK_TTL_S = 10.0  # readiness is probed every few seconds; topic metadata changes rarely


def preflight(settings: Settings) -> Policy:
    """Validate the policy and the settings the worker needs; ConfigError lists every problem."""
    problems: list[str] = []
    policy: Policy | None = None
    try:
        policy = load_policy(settings.policy_file or None)
    except PolicyError as exc:
        problems += [f"policy: {p}" for p in exc.problems]
    if not settings.model_checkpoint:
        problems.append("AGEGATE_MODEL: not set (a checkpoint directory or .safetensors file)")
    for env, value in (
        ("AGEGATE_MODEL", settings.model_checkpoint),
        ("AGEGATE_SHADOW_MODEL", settings.shadow_model_checkpoint),
    ):
        if value and not Path(value).exists():
            # A volume may still be filling: the worker waits for it, logging each attempt.
            log.warning("model path does not exist yet; the worker waits for it", setting=env, path=value)
    if settings.kafka_ssl_cafile and not Path(settings.kafka_ssl_cafile).is_file():
        problems.append(f"KAFKA_SSL_CAFILE: file {settings.kafka_ssl_cafile} does not exist")
    if problems:
        raise ConfigError(problems)
    assert policy is not None
    if abs(policy.half_life_s - settings.belief_half_life_days * DAY_S) > 1e-6:
        log.warning(
            "the policy's half_life_days differs from AGEGATE_BELIEF_HALF_LIFE_DAYS; the belief store uses the latter",
            policy_half_life_days=policy.half_life_s / DAY_S,
            setting_half_life_days=settings.belief_half_life_days,
        )
    return policy


def missing_source_topics(settings: Settings, metadata_topics: set[str]) -> list[str]:
    """The source topics (prefix + role) absent from the cluster's topic names."""
    from stream.adapters.topics import topic_name

    return [name for name in (topic_name(role, settings) for role in SOURCE_ROLES) if name not in metadata_topics]


_cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}


def topic_checks(settings: Settings) -> dict[str, Any]:
    """Readiness entries about the source topics: {"topics_ready": True}, or False with a
    `topics_reason` naming the missing topics and the prefix (a typo in AGEGATE_TOPIC_PREFIX
    otherwise shows only as "no partitions assigned"). Blocking: call it off the event loop."""
    key = (settings.kafka_bootstrap_servers, settings.topic_prefix)
    cached = _cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < TOPIC_CHECK_TTL_S:
        return cached[1]
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    result: dict[str, Any]
    try:
        names = set(AdminClient(settings.kafka_client_config()).list_topics(timeout=2).topics)
    except KafkaException:
        names = None
    missing = [] if names is None else missing_source_topics(settings, names)
    if names is None:
        result = {"topics_ready": False, "topics_reason": "Kafka did not answer a metadata request"}
    elif not missing:
        result = {"topics_ready": True}
    else:
        matching = sorted(n for n in names if n.startswith(settings.topic_prefix))
        result = {
            "topics_ready": False,
            "topics_reason": (
                f"missing source topics {', '.join(missing)}"
                + ("" if matching else f"; no topic matches AGEGATE_TOPIC_PREFIX {settings.topic_prefix!r}")
                + " (agegate topics create)"
            ),
        }
    _cache[key] = (time.monotonic(), result)
    return result


def probe_redis(settings: Settings, timeout_s: float = 3.0) -> None:
    """One PING; DependencyUnavailable when Redis does not answer. For tools that run once (replay):
    a long-running worker waits for Redis instead, since an outage there is expected to end."""
    import redis
    from redis.exceptions import RedisError

    from stream.errors import DependencyUnavailable

    kwargs: dict[str, Any] = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
    try:
        client = (
            redis.RedisCluster.from_url(settings.redis_url, **kwargs)
            if settings.redis_cluster
            else redis.Redis.from_url(settings.redis_url, **kwargs)
        )
        client.ping()
        client.close()
    except (RedisError, OSError) as exc:
        from stream.config import _redact_url

        raise DependencyUnavailable(
            f"Redis at {_redact_url(settings.redis_url)} did not answer: {type(exc).__name__}: {exc}"
        ) from None
