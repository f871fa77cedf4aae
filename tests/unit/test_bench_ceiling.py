"""The worker benchmark's CPU ceiling: the bound a target is judged against on a small machine."""

from __future__ import annotations

import pytest

from bench.worker import cpu_ceilings


def _rows(**engine_cpu: float) -> dict[str, dict[str, float]]:
    return {
        "engine": {"frames_per_s": 2500.0, "cpu_ms_per_frame": engine_cpu.get("engine", 0.6)},
        "engine-noop": {"frames_per_s": 8000.0, "cpu_ms_per_frame": engine_cpu.get("noop", 0.1)},
        "worker-noop": {
            "events": 1000,
            "frames": 2000,
            "frames_per_s": 3000.0,
            "cpu_ms_per_event_worker": 0.8,
            "cpu_ms_per_event_kafka": 0.1,
            "cpu_ms_per_event_redis": 0.1,
            "cpu_ms_per_event_bench": 5.0,  # the load generator is not the worker's cost
        },
    }


def test_ceilings_divide_the_cores_by_the_cost_of_a_frame() -> None:
    # No-op worker: 1.0 ms per event over 2 frames = 0.5 ms a frame -> 2 cores give 4,000 frames/s,
    # half of engine-noop. With the model: + (0.6 - 0.1) ms of inference = 1.0 ms -> 2,000 frames/s.
    ceilings = cpu_ceilings(_rows(), cores=2)
    assert ceilings["worker-noop_ceiling_over_engine-noop"] == pytest.approx(0.5)
    assert ceilings["worker_ceiling_over_engine"] == pytest.approx(0.8)


def test_more_inference_cost_lowers_the_model_ceiling_only() -> None:
    cheap, costly = cpu_ceilings(_rows(engine=0.6), cores=2), cpu_ceilings(_rows(engine=1.1), cores=2)
    assert costly["worker_ceiling_over_engine"] < cheap["worker_ceiling_over_engine"]
    assert costly["worker-noop_ceiling_over_engine-noop"] == cheap["worker-noop_ceiling_over_engine-noop"]


def test_no_ceiling_without_the_rows_it_needs() -> None:
    rows = _rows()
    del rows["engine-noop"]["cpu_ms_per_frame"]  # an engine row from before CPU was measured
    assert cpu_ceilings(rows, cores=2) == {}
    rows = _rows()
    del rows["engine"]
    assert set(cpu_ceilings(rows, cores=2)) == {"worker-noop_ceiling_over_engine-noop"}
