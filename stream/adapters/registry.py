"""Schema ids to Avro schemas: the local registry in `schemas/`, or a Confluent Schema Registry.

Subjects are record full names (RecordNameStrategy), so one topic could carry several record types
and a decoder can say precisely which one it got. The reader schema is always the newest packaged
version of a subject: that is the shape our code understands, whatever older writer wrote the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from importlib.resources.abc import Traversable
from typing import Any, Protocol

import fastavro

from schemas import schema_root

SIGNUP = "agegate.events.SignupEvent"
UPLOAD = "agegate.events.UploadEvent"
FEEDBACK = "agegate.events.AgeFeedback"
DECISION = "agegate.decisions.PolicyDecision"
SUBJECTS = (SIGNUP, UPLOAD, FEEDBACK, DECISION)


@dataclass(frozen=True)  # not slotted: `parsed` is cached on the instance
class RegisteredSchema:
    schema_id: int
    subject: str
    version: int
    definition: str  # the .avsc text as registered

    @cached_property
    def parsed(self) -> Any:
        return fastavro.parse_schema(json.loads(self.definition), _write_hint=False)


class SchemaRegistry(Protocol):
    def by_id(self, schema_id: int) -> RegisteredSchema | None:
        """The schema registered under an id, or None when the id is unknown."""

    def writer_for(self, subject: str) -> RegisteredSchema:
        """The schema (and id) producers use for a subject: its newest version."""


class LocalRegistry:
    """The registry `schemas/manifest.json` defines; used when no Schema Registry URL is configured."""

    def __init__(self, root: Traversable | None = None) -> None:
        root = root or schema_root()
        manifest = json.loads(root.joinpath("manifest.json").read_text())
        self._by_id: dict[int, RegisteredSchema] = {}
        for entry in manifest["schemas"]:
            text = root.joinpath(entry["file"]).read_text()
            schema = RegisteredSchema(entry["id"], entry["subject"], entry["version"], text)
            declared = json.loads(text)
            full_name = f"{declared['namespace']}.{declared['name']}"
            if full_name != schema.subject:
                raise ValueError(f"schemas/manifest.json: id {schema.schema_id} is {full_name}, not {schema.subject}")
            if schema.schema_id in self._by_id:
                raise ValueError(f"schemas/manifest.json: schema id {schema.schema_id} is used twice")
            self._by_id[schema.schema_id] = schema

    def by_id(self, schema_id: int) -> RegisteredSchema | None:
        return self._by_id.get(schema_id)

    def versions(self, subject: str) -> list[RegisteredSchema]:
        return sorted((s for s in self._by_id.values() if s.subject == subject), key=lambda s: s.version)

    def writer_for(self, subject: str) -> RegisteredSchema:
        versions = self.versions(subject)
        if not versions:
            raise KeyError(f"no schema registered for subject {subject!r}")
        return versions[-1]


class ConfluentRegistry:
    """A Confluent Schema Registry through confluent-kafka's client (cached by the client)."""

    def __init__(self, url: str, local: LocalRegistry | None = None) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client = SchemaRegistryClient({"url": url})
        self._local = local or LocalRegistry()
        self._writers: dict[str, RegisteredSchema] = {}

    def by_id(self, schema_id: int) -> RegisteredSchema | None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise
        text = schema.schema_str or ""
        declared = json.loads(text)
        subject = f"{declared.get('namespace', '')}.{declared['name']}"
        return RegisteredSchema(schema_id, subject, -1, text)

    def writer_for(self, subject: str) -> RegisteredSchema:
        if subject not in self._writers:
            from confluent_kafka.schema_registry import Schema

            local = self._local.writer_for(subject)
            schema_id = self._client.register_schema(subject, Schema(local.definition, "AVRO"))
            self._writers[subject] = RegisteredSchema(schema_id, subject, local.version, local.definition)
        return self._writers[subject]


def registry_from_url(url: str) -> SchemaRegistry:
    return ConfluentRegistry(url) if url else LocalRegistry()
