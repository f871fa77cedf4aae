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
import re
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

import structlog

from stream.errors import ConfigError

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
THIRD_PARTY_LOGGERS = ("aiokafka", "kafka", "faust", "mode", "confluent_kafka", "librdkafka")


class _OncePerWindow(logging.Filter):
    """librdkafka repeats a failing connection at every reconnect backoff (tens per second): one
    line per client and facility per window says it, the rest would bury every other line."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[object, ...], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # confluent-kafka logs (level, "%s [%s] %s", facility, client name, text).
        args = record.args if isinstance(record.args, tuple) else ()
        key = (record.levelno, *args[:2])
        now = record.created
        if now - self._last.get(key, float("-inf")) < self.window_s:
            return False
        self._last[key] = now
        return True


# Passed as `logger` to every confluent-kafka client (Settings.kafka_client_config), so librdkafka's
# own lines go through the formatter below (JSON in json mode) instead of raw text on stderr.
LIBRDKAFKA_LOGGER = logging.getLogger("librdkafka")
LIBRDKAFKA_LOGGER.addFilter(_OncePerWindow())


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


FORMATS = ("auto", "json", "console")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_state = {"format": ""}  # the resolved format once configured ("" before): error_line() follows it


def _choice(env_name: str, value: str, choices: tuple[str, ...]) -> str:
    """Case-insensitive match against the choices (people type `json`, `JSON`, `debug`)."""
    for choice in choices:
        if value.strip().lower() == choice.lower():
            return choice
    raise ConfigError([f"{env_name}: {value!r} is not one of {', '.join(choices)}"])


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    """Route every log line of the process - ours (structlog) and the standard library's (faust,
    mode, aiokafka, asyncio, warnings) - through one structlog ProcessorFormatter on stderr.

    In json mode each line is one JSON object (what a log shipper expects); console mode is for a
    terminal and never colours (no control sequences even there: they end up in files too).
    """
    fmt = _choice("AGEGATE_LOG_FORMAT", fmt or os.environ.get("AGEGATE_LOG_FORMAT", "auto"), FORMATS)
    level_name = _choice("AGEGATE_LOG_LEVEL", level or os.environ.get("AGEGATE_LOG_LEVEL", "INFO"), LEVELS)
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer()
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Applied to stdlib records (faust, aiokafka, mode, asyncio, ...) before the shared rendering.
    foreign_pre_chain: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        timestamper,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign_pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _strip_control,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name)
    logging.captureWarnings(True)  # warnings.warn(...) becomes a log line, not raw text on stderr
    for name in THIRD_PARTY_LOGGERS:
        third = logging.getLogger(name)
        third.setLevel(max(logging.INFO, logging.getLevelName(level_name)))
        # mode/faust may have attached their own handlers (plain text, colours); ours is the only one.
        for old in list(third.handlers):
            third.removeHandler(old)
        third.propagate = True
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    _state["format"] = fmt


_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")


def _strip_control(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Terminal control sequences (colours, cursor moves) from libraries' messages never reach a log."""
    event = event_dict.get("event")
    if isinstance(event, str):
        event_dict["event"] = _CONTROL.sub("", event)
    return event_dict


def error_line(text: str, *, exc: BaseException | None = None, **fields: Any) -> None:
    """One error line on stderr in the configured format: a JSON object (with the traceback in its
    `exception` field when `exc` is given) once json logging is on; else the traceback, if any, and
    the plain text (a person at a terminal, or logging not configured yet)."""
    if _state["format"] == "json":
        get_logger("agegate").error(text, exc_info=exc, **fields)
        return
    if exc is not None:
        traceback.print_exception(exc)
    print(text, file=sys.stderr)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
