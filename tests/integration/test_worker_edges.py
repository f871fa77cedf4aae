"""What a platform sees of a real worker: readiness that names a topic-prefix mistake, and /metrics
with process and Python collectors and the versions it decides with."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tests.support.worker_harness import WorkerProcess, fresh_settings, worker_env

pytestmark = pytest.mark.integration


def test_a_prefix_matching_no_topic_fails_readiness_with_that_reason_and_metrics_carry_versions(
    kafka_bootstrap: str, redis_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    settings = fresh_settings(kafka_bootstrap, "re")
    typo = f"typo{uuid.uuid4().hex[:6]}."  # no topic has this prefix
    env = worker_env(settings, model=tiny_model, redis_url=redis_url, redis_prefix=f"re{uuid.uuid4().hex[:6]}")
    env["AGEGATE_TOPIC_PREFIX"] = typo
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        body: dict[str, object] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert worker.proc is not None
            assert worker.proc.poll() is None, worker.tail()
            try:
                status, text = worker.get("/readyz")
            except OSError:
                status, text = 0, "{}"
            body = json.loads(text) if text.startswith("{") else {}
            if body.get("model_loaded") and "topics_reason" in body:
                break
            time.sleep(0.2)  # polling an external process, bounded by the deadline
        assert status == 503, (status, body)
        assert body["ready"] is False
        assert body["topics_ready"] is False
        reason = str(body["topics_reason"])
        assert f"{typo}signups" in reason
        assert repr(typo) in reason  # "no topic matches AGEGATE_TOPIC_PREFIX 'typo....'"
        # The model is loaded: the info metric carries its version and the policy's.
        info = dict(worker.metric_samples("agegate_build_info"))
        assert len(info) == 1, info
        (labels,) = info
        assert 'model_version="age_regressor@' in labels
        assert 'policy_version="default-' in labels
        assert worker.metric("process_resident_memory_bytes") > 0
        assert worker.metric("process_cpu_seconds_total") > 0
        assert worker.metric_samples("python_info")
    finally:
        worker.stop()
