"""In json mode every line a real worker writes is one JSON object a log shipper can parse.

The worker runs as a subprocess (stream/tools/localrun.py) with stdout and stderr in one file: faust's,
mode's, aiokafka's and librdkafka's lines must be JSON as well as ours, with no terminal control
sequence anywhere.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from stream.tools.loadgen import synthetic_stream
from stream.tools.produce import produce
from tests.support.worker_harness import OutputReader, WorkerProcess, fresh_settings, worker_env

pytestmark = pytest.mark.integration


def test_every_line_of_a_worker_in_json_mode_is_a_json_object(
    kafka_bootstrap: str, redis_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    settings = fresh_settings(kafka_bootstrap, "jl")
    log_path = tmp_path / "worker.log"
    env = worker_env(
        settings,
        model=tiny_model,
        redis_url=redis_url,
        redis_prefix=f"jl{uuid.uuid4().hex[:6]}",
        AGEGATE_LOG_FORMAT="json",
    )
    worker = WorkerProcess(env, log_path).start()
    reader = OutputReader(settings)
    try:
        worker.wait_ready()
        produced = produce(settings, list(synthetic_stream(12, seed=3, bad_share=0.25, user_prefix="jl")))
        outputs = reader.poll_until({p.idempotency_key for p in produced}, timeout=120)
        assert outputs.accounted() >= {p.idempotency_key for p in produced}
    finally:
        worker.stop()
        reader.close()
    assert worker.wait(timeout=5) == 0
    lines = log_path.read_bytes().decode().splitlines()
    assert len(lines) > 3, lines
    loggers = set()
    for line in lines:
        assert "\x1b" not in line, repr(line)
        record = json.loads(line)  # raises on any line that is not JSON
        assert isinstance(record, dict), line
        assert {"event", "level", "timestamp"} <= set(record), line
        loggers.add(str(record.get("logger", "")))
    events = [json.loads(line)["event"] for line in lines]
    assert "model loaded" in events
    # Not only our own lines: the libraries' lines went through the same formatter.
    assert any(name.startswith(("faust", "mode", "aiokafka")) for name in loggers), sorted(loggers)
