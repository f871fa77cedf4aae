"""Every Prometheus metric agegate exports, defined once.

Names are stable API (dashboards and alerts in deploy/observability use them); a comment says what
each one is for. Label values are bounded sets (topics, actions, reason codes), never user ids.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from stream import __version__

REGISTRY = CollectorRegistry(auto_describe=True)
# process_* (CPU, resident memory, open fds, start time), python_info and python_gc_*: the same
# collectors prometheus_client puts on its default registry, on ours (the one /metrics serves).
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# What runs: agegate's version, and once the model is loaded the model and policy versions
# (`agegate_build_info{version=..., model_version=..., policy_version=...} 1`); dashboards join on it.
BUILD_INFO = Info("agegate_build", "agegate, model and policy versions", registry=REGISTRY)
BUILD_INFO.info({"version": __version__, "model_version": "", "policy_version": ""})


def set_build_info(*, model_version: str, policy_version: str) -> None:
    """Called when the model is loaded: the versions every decision is made with."""
    BUILD_INFO.info({"version": __version__, "model_version": model_version, "policy_version": policy_version})


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# Events taken from a source topic, before decoding.
EVENTS_CONSUMED = Counter("agegate_events_consumed_total", "Events consumed", ["topic"], registry=REGISTRY)
# Decisions emitted (acknowledged by Kafka), by action.
DECISIONS = Counter("agegate_decisions_total", "Decisions emitted", ["action", "surface"], registry=REGISTRY)
# Dead letters emitted, by reason code.
DEAD_LETTERS = Counter("agegate_dead_letters_total", "Dead letters emitted", ["reason"], registry=REGISTRY)
# Frames that failed alone (the event was decided on its other frames), by reason.
FRAME_ERRORS = Counter("agegate_frame_errors_total", "Frames that could not be scored", ["reason"], registry=REGISTRY)
# Frames per inference micro-batch.
BATCH_SIZE = Histogram("agegate_batch_frames", "Frames per micro-batch", buckets=_BATCH_BUCKETS, registry=REGISTRY)
# Wall time of one micro-batch in the model thread: the forward pass (the engine decodes a pass in
# its prepare thread first, see DECODE_SECONDS). Timed in the thread, so a pass queued behind
# another does not count its wait.
INFERENCE_SECONDS = Histogram(
    "agegate_inference_seconds", "Inference time per micro-batch", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
# Wall time of preparing one micro-batch in the thread ahead of the model's: decoding its frames
# (in the decoder processes, or in that thread with AGEGATE_DECODE_PROCESSES=0).
DECODE_SECONDS = Histogram(
    "agegate_decode_seconds", "Frame decoding time per micro-batch", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
# Event time (Kafka timestamp) to decision acknowledged.
END_TO_END_SECONDS = Histogram(
    "agegate_event_to_decision_seconds", "Event to decision latency", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
# How long the interpreter stopped for each cyclic garbage collection, by generation (0-2). The
# worker freezes its start-up heap (stream/runners/gc_pauses.py), so full collections stay short; a
# growing generation-2 tail means something long-lived is accumulating objects.
GC_PAUSE_SECONDS = Histogram(
    "agegate_gc_pause_seconds",
    "Cyclic garbage collection pause",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
# How long a consumer batch spent in each step of the pipeline (stream/pipeline/pipeline.py), waits
# included: "score" holds the wait for a free forward pass, "fuse" the wait for earlier batches'
# belief steps, "emit" the wait for Kafka's acknowledgements. The step whose share grows is where
# a worker that falls behind spends its time (docs/operations.md).
STEP_SECONDS = Histogram(
    "agegate_step_seconds",
    "Time a consumer batch spent in a pipeline step, waits included",
    ["step"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
# One pipelined belief round trip to Redis for a micro-batch.
BELIEF_UPDATE_SECONDS = Histogram(
    "agegate_belief_update_seconds", "Redis belief update per batch", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
# Events accepted but not yet committed (bounded by queue_max_events).
IN_FLIGHT_EVENTS = Gauge("agegate_in_flight_events", "Events in flight", registry=REGISTRY)
# Consumer lag per partition as the worker sees it (high watermark - position).
CONSUMER_LAG = Gauge("agegate_consumer_lag", "Consumer lag", ["topic", "partition"], registry=REGISTRY)
# 1 while a dependency is unreachable and consumption is paused.
DEPENDENCY_DOWN = Gauge("agegate_dependency_down", "Dependency unreachable", ["dependency"], registry=REGISTRY)
# Retries of transient faults, by dependency.
RETRIES = Counter("agegate_retries_total", "Retried transient faults", ["dependency"], registry=REGISTRY)
# A belief this worker stored is gone (FLUSHALL, failover without persistence): those users start over.
BELIEFS_LOST = Counter(
    "agegate_beliefs_lost_total", "Users whose belief this worker had stored was gone from Redis", registry=REGISTRY
)
# 1 while the worker takes no input because the invalid share was exceeded (POST /resume resumes).
INPUT_PAUSED = Gauge("agegate_input_paused", "Input paused on the invalid-share guard", registry=REGISTRY)
# 1 when the worker is ready (assigned, model loaded, Redis reachable).
READY = Gauge("agegate_ready", "Worker readiness", registry=REGISTRY)
# Online accuracy: absolute error of the belief at the time a verified age arrives.
ONLINE_ABS_ERROR_YEARS = Histogram(
    "agegate_online_abs_error_years",
    "Belief error against verified ages",
    buckets=(0.5, 1, 2, 3, 4, 5, 7, 10, 15),
    registry=REGISTRY,
)
# Mean predicted age of recent frames (drift signal).
PREDICTED_AGE_MEAN = Gauge("agegate_predicted_age_mean", "Mean predicted age, recent frames", registry=REGISTRY)
# Shadow scoring: actions that would differ (from -> to), and absolute difference of estimates.
SHADOW_ACTION_CHANGES = Counter(
    "agegate_shadow_action_changes_total",
    "Shadow decisions differing from live",
    ["from_action", "to_action"],
    registry=REGISTRY,
)
SHADOW_ABS_DIFF_YEARS = Histogram(
    "agegate_shadow_abs_diff_years",
    "Shadow vs live estimate difference",
    buckets=(0.25, 0.5, 1, 2, 4, 8),
    registry=REGISTRY,
)
