"""Schema contracts: every kept version is readable by the current one (BACKWARD), and documented."""

from __future__ import annotations

import io
import json
import struct

import fastavro
import pytest
from fastavro.utils import generate_many

from schemas import schema_root
from stream.adapters.codec import AvroCodec
from stream.adapters.registry import LocalRegistry, RegisteredSchema
from stream.core.subjects import SUBJECTS

registry = LocalRegistry()
ALL_VERSIONS = [s for subject in SUBJECTS for s in registry.versions(subject)]


def frame(schema: RegisteredSchema, record: dict) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", schema.schema_id))
    fastavro.schemaless_writer(out, schema.parsed, record)
    return out.getvalue()


@pytest.mark.parametrize("writer", ALL_VERSIONS, ids=lambda s: f"{s.subject}-v{s.version}")
def test_every_kept_version_is_read_by_the_current_one(writer: RegisteredSchema) -> None:
    codec = AvroCodec(registry)
    current = registry.writer_for(writer.subject)
    current_fields = {f["name"]: f for f in json.loads(current.definition)["fields"]}
    for record in generate_many(writer.parsed, 25):
        data = frame(writer, record)
        as_written = fastavro.schemaless_reader(io.BytesIO(data[5:]), writer.parsed, writer.parsed)
        assert isinstance(as_written, dict)
        decoded = codec.decode(data, writer.subject)
        assert set(decoded.record) == set(current_fields)
        for name, value in decoded.record.items():
            if name in as_written:
                assert value == as_written[name], name
            else:  # a field added later reads as its default
                assert value == current_fields[name]["default"], name


def test_the_compatibility_check_catches_a_breaking_change() -> None:
    """A new version that adds a field without a default cannot read old data: the test above would fail."""
    current = registry.writer_for("agegate.events.AgeFeedback")
    broken = json.loads(current.definition)
    broken["fields"].append({"name": "reviewer", "type": "string", "doc": "no default: breaks BACKWARD"})
    old = next(iter(generate_many(current.parsed, 1)))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, current.parsed, old)
    body.seek(0)
    with pytest.raises(fastavro.read.SchemaResolutionError):
        fastavro.schemaless_reader(body, current.parsed, fastavro.parse_schema(broken))


def _walk_fields(schema: object, path: str = "") -> list[tuple[str, dict]]:
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            for f in schema["fields"]:
                found.append((f"{path}.{f['name']}", f))
                found += _walk_fields(f["type"], f"{path}.{f['name']}")
        elif schema.get("type") == "array":
            found += _walk_fields(schema["items"], path)
    elif isinstance(schema, list):
        for branch in schema:
            found += _walk_fields(branch, path)
    return found


@pytest.mark.parametrize("schema", ALL_VERSIONS, ids=lambda s: f"{s.subject}-v{s.version}")
def test_every_field_is_documented_and_namespaced(schema: RegisteredSchema) -> None:
    declared = json.loads(schema.definition)
    assert declared["namespace"].startswith("agegate.")
    assert declared.get("doc")
    undocumented = [path for path, f in _walk_fields(declared) if not f.get("doc")]
    assert undocumented == []


def test_manifest_ids_are_unique_and_files_exist() -> None:
    manifest = json.loads(schema_root().joinpath("manifest.json").read_text())
    ids = [e["id"] for e in manifest["schemas"]]
    assert len(ids) == len(set(ids))
    for entry in manifest["schemas"]:
        assert schema_root().joinpath(entry["file"]).is_file()
    for subject in SUBJECTS:
        versions = [s.version for s in registry.versions(subject)]
        assert versions == list(range(1, len(versions) + 1)), subject
