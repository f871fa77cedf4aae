"""Schema ids to Avro schemas: the protocol, and the local registry packaged in `schemas/`.

Here a "subject" is a record's full name, so a decoder can say precisely which record type it got
whatever registry subject (naming strategy) the schema was filed under; a Confluent-compatible
registry (stream/adapters/confluent_registry.py) maps it to its own subjects. The reader schema is
always the newest packaged version of a record type: that is the shape our code understands,
whatever older writer wrote the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from importlib.resources.abc import Traversable
from typing import Any, Protocol

import fastavro

from schemas import schema_root
from stream.core.subjects import DECISION, FEEDBACK, RETAINED_FRAME, SIGNUP, SUBJECTS, UPLOAD

__all__ = [
    "DECISION",
    "FEEDBACK",
    "RETAINED_FRAME",
    "SIGNUP",
    "SUBJECTS",
    "UPLOAD",
    "LocalRegistry",
    "RegisteredSchema",
    "SchemaRegistry",
    "UnusableSchema",
]


class UnusableSchema(ValueError):
    """A registry holds this id, but not as an Avro record agegate can read (a JSON schema, say)."""


@dataclass(frozen=True)  # not slotted: `parsed` is cached on the instance
class RegisteredSchema:
    schema_id: int
    subject: str
    version: int
    definition: str  # the .avsc text as registered

    @cached_property
    def parsed(self) -> Any:
        # Parsed with fastavro's hint (its default): a schema so marked is not parsed again by every
        # schemaless_writer and schemaless_reader call, which was half of an encode's cost.
        return fastavro.parse_schema(json.loads(self.definition))


class SchemaRegistry(Protocol):
    """What the codec needs. A remote registry may also raise DependencyUnavailable (it cannot be
    reached: the caller retries) or another AgegateError (it refused: a configuration mistake)."""

    def by_id(self, schema_id: int) -> RegisteredSchema | None:
        """The schema registered under an id, or None when the id is unknown.

        Raises UnusableSchema when the id holds something that is not an Avro record."""

    def writer_for(self, subject: str) -> RegisteredSchema:
        """The schema (and id) producers use for a record type: its newest packaged version."""


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
