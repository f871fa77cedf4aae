"""Structured logging: JSON in deployments, readable console output on a terminal.

A redaction processor runs last before rendering, so user ids, secrets and image bytes never reach
logs even when a caller passes them by mistake. Third-party clients log through stdlib logging,
which that processor never sees, and their DEBUG output dumps fetched records (keys are user
ids): their loggers are capped at INFO whatever AGEGATE_LOG_LEVEL says.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values are replaced before rendering. User ids are hashed so one user's lines can
# still be correlated in a log search without exposing the id.
_HASHED_KEYS = frozenset({"user_id", "user", "subject_id"})
_DROPPED_KEYS = frozenset(
    {
        "password",
        "secret",
        "token",
        "sasl_password",
        "kafka_sasl_password",
        "image",
        "frame",
        "data",
        "raw",
        "frame_bytes",
        "value",
        "key",
        "api_key",
        "authorization",
    }
)


# Libraries whose DEBUG lines carry message keys or values; never below INFO.
THIRD_PARTY_LOGGERS = ("aiokafka", "kafka", "faust", "mode", "confluent_kafka")


def _fingerprint(value: object) -> str:
    return "u:" + hashlib.sha256(str(value).encode()).hexdigest()[:12]


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        lowered = key.lower()
        if lowered in _HASHED_KEYS:
            event_dict[key] = _fingerprint(event_dict[key])
        elif lowered in _DROPPED_KEYS or isinstance(event_dict[key], bytes | bytearray | memoryview):
            event_dict[key] = "[redacted]"
    return event_dict


class _CurrentStderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was configured: a caller that
    swaps stderr (a test harness capturing output, a daemon redirecting it) never leaves the loggers
    writing to a closed stream."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    fmt = fmt or os.environ.get("AGEGATE_LOG_FORMAT", "auto")
    level_name = (level or os.environ.get("AGEGATE_LOG_LEVEL", "INFO")).upper()
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer()
    )
    logging.basicConfig(stream=sys.stderr, level=level_name, format="%(message)s", force=True)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level_name)))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
