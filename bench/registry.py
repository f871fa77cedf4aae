"""What resolving schema ids through a Schema Registry costs, next to the packaged manifest.

The first encode (register or look up the subject) and the first decode of an id (fetch it) go to
the registry; after that both are cached per process, so the steady-state cost should equal the
manifest's. Needs a registry (`bash deploy/local/infra.sh up registry`); subjects use a throwaway
topic prefix.

    SCHEMA_REGISTRY_URL=http://127.0.0.1:38081/apis/ccompat/v7 python bench/registry.py [--n 20000]

Prints a table and writes bench/results/registry.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any

from machine import cpu_model  # bench/ is on sys.path when run as a script

from stream.adapters.codec import AvroCodec
from stream.adapters.confluent_registry import registry_from_settings
from stream.config import load_settings
from stream.core.subjects import UPLOAD
from stream.tools import events

RESULTS = Path(__file__).resolve().parent / "results" / "registry.json"
LOCAL_REGISTRY = "http://127.0.0.1:38081/apis/ccompat/v7"


def record() -> dict[str, Any]:
    return events.upload(
        "bench-user",
        at=1_790_000_000.0,
        surface="profile_photo",
        frames=[events.inline_frame("f0", b"\xff\xd8" + b"j" * 2000)],
    )


def measure(make: Any, n: int) -> dict[str, float]:
    codec = make()
    t0 = time.perf_counter()
    data = codec.encode(UPLOAD, record())
    first_encode = time.perf_counter() - t0
    fresh = make()
    t0 = time.perf_counter()
    fresh.decode(data, UPLOAD)
    first_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        codec.decode(data, UPLOAD)
    decode = (time.perf_counter() - t0) / n
    rec = record()
    t0 = time.perf_counter()
    for _ in range(n):
        codec.encode(UPLOAD, rec)
    encode = (time.perf_counter() - t0) / n
    return {
        "first_encode_ms": first_encode * 1e3,
        "first_decode_ms": first_decode * 1e3,
        "cached_decode_us": decode * 1e6,
        "cached_encode_us": encode * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="encodes and decodes timed per registry")
    args = parser.parse_args()
    url = os.environ.get("SCHEMA_REGISTRY_URL") or LOCAL_REGISTRY
    settings = load_settings(
        environ={}, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", schema_registry_url=url, schema_auto_register=True
    )
    rows = {
        "manifest": measure(AvroCodec, args.n),
        "registry": measure(lambda: AvroCodec(registry_from_settings(settings)), args.n),
    }
    for name, r in rows.items():
        print(
            f"{name:9} first encode {r['first_encode_ms']:7.2f} ms  first decode {r['first_decode_ms']:6.2f} ms  "
            f"cached decode {r['cached_decode_us']:6.1f} us  cached encode {r['cached_encode_us']:6.1f} us"
        )
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    RESULTS.write_text(json.dumps({"machine": machine, "n": args.n, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
