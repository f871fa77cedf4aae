"""`agegate schemas register|check`: the packaged Avro schemas in the configured Schema Registry.

With auto-registration off (the default, for deployments), a release registers the schemas once
(`register`, also every older packaged version so the registry checks each change against its
history), and `check` says whether every producer and reader of this version will find its ids.
Without SCHEMA_REGISTRY_URL there is nothing to do: the packaged manifest is the registry.
"""

from __future__ import annotations

import argparse
import sys

from stream.adapters.confluent_registry import ConfluentRegistry, registry_from_settings
from stream.config import load_settings
from stream.core.subjects import SUBJECTS
from stream.errors import AgegateError, ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("register", "check"),
        help="register: file every packaged schema version under its subject; check: look the newest ones up",
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    registry = registry_from_settings(settings)
    if not isinstance(registry, ConfluentRegistry):
        print("schemas: SCHEMA_REGISTRY_URL is not set; the packaged schemas/manifest.json is the registry")
        return 0
    missing = 0
    for record_name in SUBJECTS:
        subject = registry.subject_for(record_name)
        try:
            found = registry.register(record_name) if args.action == "register" else registry.writer_for(record_name)
        except AgegateError as exc:  # refused (not registered, incompatible, credentials) or unreachable
            print(f"{subject:45} {record_name}: {exc}", file=sys.stderr)
            missing += 1
            continue
        print(f"{subject:45} {record_name} v{found.version}: id {found.schema_id}")
    return 1 if missing else 0
