"""Schema ids through a Confluent-compatible Schema Registry (Confluent, Apicurio's ccompat API).

The codec asks two things of a registry: the writer schema behind an id (decoding) and the id of
the packaged schema for a record type (encoding). Both are answered by confluent-kafka's
`SchemaRegistryClient` and cached here for the life of the process, so the registry is asked once
per id and once per record type.

Every failure is sorted by whose fault it is, because the worker acts on the difference:
- an id the registry says it does not know (404) is the event's fault: `by_id` returns None and the
  codec dead-letters the bytes as `unknown_schema_id`;
- a registry that cannot be reached, times out or answers 5xx/429 is an outage:
  `DependencyUnavailable` (retried; a valid event is never dead-lettered for it);
- a definite refusal (bad credentials, the schema not registered while auto-registration is off,
  an incompatible schema) is a deployment mistake: `RegistryRefused`, which no retry fixes.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from stream.adapters.registry import LocalRegistry, RegisteredSchema, SchemaRegistry, UnusableSchema
from stream.adapters.topics import TOPICS, topic_name
from stream.config import Settings
from stream.core.subjects import SUBJECTS
from stream.errors import AgegateError, DependencyUnavailable

T = TypeVar("T")
OUTAGE_STATUS = frozenset({408, 429, 500, 502, 503, 504})

# The registry client's HTTP library logs every request with its full URL at INFO, and a URL may carry
# the registry's user info: keep those lines out of our logs (failures reach us as exceptions anyway).
for _name in ("httpx", "httpx2", "httpcore", "httpcore2"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class RegistryRefused(AgegateError):
    """The registry answered and said no: fix the configuration or the schema, retrying will not help."""


def subject_name(strategy: str, record_name: str, topic: str) -> str:
    """Confluent's subject naming: TopicNameStrategy (`<topic>-value`) or RecordNameStrategy."""
    if strategy == "topic_name":
        return f"{topic}-value"
    if strategy == "record_name":
        return record_name
    raise ValueError(f"unknown subject naming strategy {strategy!r}")


def record_topics(settings: Settings) -> dict[str, str]:
    """Record full name -> the topic its values are written to (each record type has one topic)."""
    return {spec.value: topic_name(spec.role, settings) for spec in TOPICS if spec.value in SUBJECTS}


def _ask(what: str, call: Callable[[], T]) -> T:
    """One registry call; an outage becomes DependencyUnavailable, a definite answer stays as it is."""
    try:
        return call()
    except SchemaRegistryError as exc:
        if exc.http_status_code in OUTAGE_STATUS:
            raise DependencyUnavailable(f"schema registry: {what}: {exc}") from None
        raise
    except Exception as exc:  # transport, TLS, timeout, a malformed answer: nothing definite was said
        raise DependencyUnavailable(f"schema registry unreachable: {what}: {type(exc).__name__}: {exc}") from None


def _refused(what: str, exc: SchemaRegistryError) -> RegistryRefused:
    if exc.http_status_code in (401, 403):
        return RegistryRefused(f"schema registry refused our credentials ({what}): HTTP {exc.http_status_code}")
    return RegistryRefused(f"schema registry refused {what}: {exc}")


class ConfluentRegistry:
    """A `SchemaRegistry` over a Confluent-compatible registry; the packaged schemas are the writers."""

    def __init__(
        self,
        client: SchemaRegistryClient,
        *,
        topics: Mapping[str, str],
        strategy: str = "topic_name",
        auto_register: bool = False,
        compatibility: str = "",
        local: LocalRegistry | None = None,
    ) -> None:
        self.client = client
        self._topics = dict(topics)
        self.strategy = strategy
        self.auto_register = auto_register
        self.compatibility = compatibility
        self._local = local or LocalRegistry()
        self._by_id: dict[int, RegisteredSchema] = {}
        self._writers: dict[str, RegisteredSchema] = {}
        subject_name(strategy, "", "")  # an unknown strategy fails here, not at the first event

    def subject_for(self, record_name: str) -> str:
        if record_name not in self._topics:
            raise KeyError(f"no topic carries {record_name!r}")
        return subject_name(self.strategy, record_name, self._topics[record_name])

    def by_id(self, schema_id: int) -> RegisteredSchema | None:
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            schema = _ask(f"schema id {schema_id}", lambda: self.client.get_schema(schema_id))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None  # not cached: the id may be registered later
            raise _refused(f"schema id {schema_id}", exc) from None
        found = _as_avro_record(schema_id, schema)
        self._by_id[schema_id] = found
        return found

    def writer_for(self, subject: str) -> RegisteredSchema:
        """`subject` is a record full name (the codec's word for it); the registry subject follows the strategy."""
        if subject not in self._writers:
            self._writers[subject] = self._resolve(subject, register=self.auto_register)
        return self._writers[subject]

    def register(self, record_name: str) -> RegisteredSchema:
        """Register every packaged version of a record type, oldest first, and return the newest.

        The history goes in too, so the registry checks each version against the ones before it
        (under the compatibility level set first, when one is configured) and knows the ids that
        older producers may still write.
        """
        subject = self.subject_for(record_name)
        for old in self._local.versions(record_name)[:-1]:
            schema = Schema(old.definition, "AVRO")
            try:
                self._set_compatibility(subject)
                _ask(f"register {subject}", functools.partial(self.client.register_schema, subject, schema))
            except SchemaRegistryError as exc:
                raise _refused(f"registering {record_name} v{old.version} under {subject}", exc) from None
        self._writers[record_name] = self._resolve(record_name, register=True)
        return self._writers[record_name]

    def _set_compatibility(self, subject: str) -> None:
        if self.compatibility:
            _ask(f"set compatibility of {subject}", lambda: self.client.set_compatibility(subject, self.compatibility))

    def _resolve(self, record_name: str, *, register: bool) -> RegisteredSchema:
        local = self._local.writer_for(record_name)
        subject = self.subject_for(record_name)
        schema = Schema(local.definition, "AVRO")
        schema_id: int | None
        try:
            if register:
                self._set_compatibility(subject)
                schema_id = _ask(f"register {subject}", lambda: self.client.register_schema(subject, schema))
            else:
                schema_id = _ask(f"look up {subject}", lambda: self.client.lookup_schema(subject, schema)).schema_id
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and not register:
                raise RegistryRefused(
                    f"subject {subject} has no schema equal to the packaged {record_name} v{local.version}, and "
                    "auto-registration is off: register it (`agegate schemas register`) or set "
                    "AGEGATE_SCHEMA_AUTO_REGISTER=true"
                ) from None
            doing = "registering" if register else "looking up"
            raise _refused(f"{doing} {record_name} under {subject}", exc) from None
        if schema_id is None:
            raise RegistryRefused(f"schema registry gave no id for {subject}")
        found = RegisteredSchema(int(schema_id), record_name, local.version, local.definition)
        self._by_id.setdefault(found.schema_id, found)
        return found


def _as_avro_record(schema_id: int, schema: Schema) -> RegisteredSchema:
    if (schema.schema_type or "AVRO") != "AVRO":
        raise UnusableSchema(f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
    if schema.references:
        raise UnusableSchema(f"schema id {schema_id} has references, which agegate's schemas never use")
    try:
        declared: Any = json.loads(schema.schema_str or "")
    except ValueError:
        raise UnusableSchema(f"schema id {schema_id} is not valid JSON") from None
    if not isinstance(declared, dict) or declared.get("type") != "record" or "name" not in declared:
        raise UnusableSchema(f"schema id {schema_id} is not an Avro record")
    name = str(declared["name"])
    full_name = name if "." in name or not declared.get("namespace") else f"{declared['namespace']}.{name}"
    found = RegisteredSchema(schema_id, full_name, -1, schema.schema_str or "")
    try:
        found.parsed  # noqa: B018 - parse once here, so a broken schema is named as such
    except Exception as exc:
        raise UnusableSchema(f"schema id {schema_id} is not a valid Avro schema: {exc}") from None
    return found


def registry_client(settings: Settings) -> SchemaRegistryClient:
    return SchemaRegistryClient(settings.schema_registry_client_config())


def registry_from_settings(settings: Settings) -> SchemaRegistry:
    """The configured registry, or the packaged manifest when no registry URL is set (zero setup)."""
    if not settings.schema_registry_url:
        return LocalRegistry()
    return ConfluentRegistry(
        registry_client(settings),
        topics=record_topics(settings),
        strategy=settings.schema_subject_strategy,
        auto_register=settings.schema_auto_register,
        compatibility=settings.schema_compatibility,
    )
