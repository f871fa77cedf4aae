"""agegate's error hierarchy: few classes, each carrying what the caller needs to act on it."""

from __future__ import annotations


class AgegateError(Exception):
    """Base of every error agegate raises on purpose."""


class ConfigError(AgegateError):
    """Configuration is invalid; lists every problem found, not just the first."""

    subject = "configuration"  # what is invalid, in messages: "invalid configuration: ..."

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid {self.subject}:\n  - " + "\n  - ".join(problems))


class InvalidEvent(AgegateError):
    """An event that can never be processed; it goes to dead letters with its bytes and this reason.

    `reason` is a short stable code (for metrics and dead-letter headers); `detail` is for humans.
    """

    reason: str = "invalid_event"

    def __init__(self, detail: str, *, reason: str | None = None, raw: bytes | None = None) -> None:
        if reason is not None:
            self.reason = reason
        self.detail = detail
        self.raw = raw
        super().__init__(f"{self.reason}: {detail}")


class DecodeError(InvalidEvent):
    """The bytes are not a valid Confluent-framed Avro record of an expected schema."""

    reason = "decode_error"

    def __init__(self, detail: str, *, reason: str, raw: bytes | None = None, schema_id: int | None = None) -> None:
        super().__init__(detail, reason=reason, raw=raw)
        self.schema_id = schema_id


class DependencyUnavailable(AgegateError):
    """A dependency (Redis, Kafka) is down; the caller retries with backoff, never skips."""


class ModelUnavailable(AgegateError):
    """The model checkpoint is missing or unusable: not there yet, half copied, truncated, not a
    checkpoint. The model package's own errors (model.errors.ModelError) are wrapped into this at the
    edge that loads it. The worker waits for a usable one, not ready, instead of crash-looping; a command
    that needs the model now reports it as a missing file (exit code 2)."""


# Exit codes of every `agegate` command (README "Exit codes"); scripts and Kubernetes act on them.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and its answer is "no": a check found differences, a gate failed
EXIT_USAGE = 2  # bad arguments, configuration, policy file, or a file that does not exist
EXIT_UNAVAILABLE = 3  # a dependency (Kafka, Redis) unreachable, or another fatal runtime error
EXIT_GRACE_EXCEEDED = 4  # worker: SIGTERM's grace ran out before the in-flight work was committed
EXIT_INTERRUPTED = 130  # Ctrl-C
