"""Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then the Avro body.

Decoding raises `DecodeError` for anything wrong with the bytes, whose `reason` names what was
wrong, so a worker can dead-letter them and keep going. The one other way out is the registry's own
failure, which is not the event's fault and must never dead-letter it: `DependencyUnavailable` (an
outage: retry) or another `AgegateError` (e.g. the registry refused our credentials: stop).

fastavro itself refuses a short read (EOFError): a truncated body, or a length prefix larger than
what is left (a "huge declared length"), fails without allocating anything, since a BytesIO
returns at most what is left. Reading from a BytesIO keeps the whole body in fastavro's C code.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError

from stream.adapters.registry import LocalRegistry, RegisteredSchema, SchemaRegistry, UnusableSchema
from stream.errors import AgegateError, DecodeError

MAGIC = 0
HEADER = struct.Struct(">bI")
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Decoded:
    subject: str
    schema_id: int
    record: dict[str, Any]


class AvroCodec:
    def __init__(
        self, registry: SchemaRegistry | None = None, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self.registry = registry or LocalRegistry()
        self._local = LocalRegistry()
        self.max_message_bytes = max_message_bytes
        self._readers: dict[str, RegisteredSchema] = {}

    def _reader(self, subject: str) -> RegisteredSchema:
        if subject not in self._readers:
            self._readers[subject] = self._local.writer_for(subject)
        return self._readers[subject]

    def encode(self, subject: str, record: Mapping[str, Any]) -> bytes:
        """Frame and serialise a record with the subject's newest schema.

        Raises ValueError (fastavro's validation) when the record does not fit the schema: that is
        a bug in the producer, not bad input, so it is not a DecodeError. Resolving the schema id may
        raise the registry's DependencyUnavailable (outage) or RegistryRefused (configuration).
        """
        schema = self.registry.writer_for(subject)
        out = io.BytesIO()
        out.write(HEADER.pack(MAGIC, schema.schema_id))
        fastavro.schemaless_writer(out, schema.parsed, dict(record), strict_allow_default=True)
        return out.getvalue()

    def decode(self, data: bytes | None, expected: Collection[str] | str | None = None) -> Decoded:
        """Decode one framed message; `expected` lists the subjects this caller accepts."""
        try:
            return self._decode(data, expected)
        except AgegateError:  # DecodeError, or the registry's own failure (not the event's)
            raise
        except Exception as exc:  # the promise: nothing else leaves this function
            raise DecodeError(
                f"unexpected {type(exc).__name__} while decoding: {exc}", reason="body_mismatch", raw=data
            ) from exc

    def _decode(self, data: bytes | None, expected: Collection[str] | str | None) -> Decoded:
        if not data:
            raise DecodeError("empty message (no bytes)", reason="empty", raw=data or b"")
        if len(data) > self.max_message_bytes:
            raise DecodeError(
                f"message of {len(data)} bytes exceeds the {self.max_message_bytes}-byte limit",
                reason="too_large",
                raw=data,
            )
        if len(data) < HEADER.size:
            raise DecodeError(
                f"{len(data)} bytes is shorter than the 5-byte Confluent header", reason="truncated_header", raw=data
            )
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(f"magic byte is {magic}, expected 0", reason="bad_magic", raw=data, schema_id=None)
        try:
            writer = self.registry.by_id(schema_id)
        except UnusableSchema as exc:
            raise DecodeError(str(exc), reason="unexpected_schema", raw=data, schema_id=schema_id) from None
        if writer is None:
            raise DecodeError(
                f"schema id {schema_id} is not registered", reason="unknown_schema_id", raw=data, schema_id=schema_id
            )
        accepted = {expected} if isinstance(expected, str) else set(expected or ())
        if accepted and writer.subject not in accepted:
            raise DecodeError(
                f"schema id {schema_id} is {writer.subject}; this topic expects {', '.join(sorted(accepted))}",
                reason="unexpected_schema",
                raw=data,
                schema_id=schema_id,
            )
        reader = self._reader(writer.subject)
        # The same schema on both sides (the usual case) needs no resolution: saying so spares
        # fastavro a deep comparison of the two parsed schemas on every message.
        resolve_to = None if writer.definition == reader.definition else reader.parsed
        buf = io.BytesIO(data)
        buf.seek(HEADER.size)
        try:
            record = fastavro.schemaless_reader(buf, writer.parsed, resolve_to)
        except EOFError as exc:  # fastavro's check of every read: fewer bytes left than declared
            raise DecodeError(
                f"body is truncated: {exc or 'no bytes left'}", reason="truncated_body", raw=data, schema_id=schema_id
            ) from None
        except SchemaResolutionError as exc:
            raise DecodeError(
                f"writer schema cannot be read as {reader.subject} v{reader.version}: {exc}",
                reason="incompatible_schema",
                raw=data,
                schema_id=schema_id,
            ) from None
        except Exception as exc:
            raise DecodeError(
                f"body does not match schema id {schema_id}: {type(exc).__name__}: {exc}",
                reason="body_mismatch",
                raw=data,
                schema_id=schema_id,
            ) from None
        if buf.tell() != len(data):
            raise DecodeError(
                f"{len(data) - buf.tell()} trailing bytes after the record",
                reason="trailing_bytes",
                raw=data,
                schema_id=schema_id,
            )
        if not isinstance(record, dict):
            raise DecodeError("body is not a record", reason="body_mismatch", raw=data, schema_id=schema_id)
        return Decoded(writer.subject, schema_id, record)
