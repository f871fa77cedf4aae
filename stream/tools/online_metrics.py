"""Online metrics: decisions joined with the verified ages that arrive later, plus estimate drift.

    agegate eval --online [--metrics-port 9464] [--window-days 7] [--idle-exit-s S] [--snapshot FILE]

A separate confluent-kafka process reads the decisions and age-feedback topics. Every decision that
carried a model estimate is labelled once its user's verified age is known (from either order of
arrival: a decision read after the feedback is joined on arrival), the age at decision time being
the verified age moved back by the time between them. Over a rolling window (by event time, so a
replay gives the same numbers as live) it computes MAE, signed error, threshold error rates (under-
age ALLOW, false rejection of people aged T..T+2, fallback to verification) and action rates per
(jurisdiction, surface) cohort, and the population stability index of recent estimates against a
reference window, exported as Prometheus gauges with an alert gauge.

The consumer commits no offsets: its state is memory only, rebuilt on start by reading what the
topics retain (30 days, the join window). That costs a re-read per restart and keeps the process
stateless to operate.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from model.evaluation.drift import DEFAULT_PSI_ALERT, population_stability_index
from model.evaluation.metrics import AGE_BANDS, band_label
from stream.core.belief import YEAR_S

log = logging.getLogger(__name__)

DAY_S = 86400.0
NEAR_SPAN_YEARS = 3.0  # false rejection counts people aged T to T+2, as offline
REJECTING = frozenset({"RESTRICT", "BLOCK"})
ALL = "all"


@dataclass(frozen=True, slots=True)
class DecisionFact:
    """What the join needs from one PolicyDecision."""

    key: str  # idempotency key: redelivered decisions are counted once
    user_id: str
    event_time: float  # unix seconds
    jurisdiction: str
    surface: str
    action: str
    age_mean: float | None
    threshold: float | None
    verified: bool

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> DecisionFact:
        ev = r.get("evidence") or {}
        return cls(
            key=str(r.get("idempotency_key") or r.get("decision_id")),
            user_id=str(r["user_id"]),
            event_time=_seconds(r["event_time"]),
            jurisdiction=str(r["jurisdiction"]),
            surface=str(r["surface"]),
            action=str(r["action"]),
            age_mean=ev.get("age_mean"),
            threshold=ev.get("threshold"),
            verified=bool(ev.get("verified", False)),
        )


@dataclass(frozen=True, slots=True)
class Sample:
    """One decision labelled with the true age the user had when it was made."""

    time: float  # when it was labelled: the later of the decision and the verification
    jurisdiction: str
    surface: str
    action: str
    estimate: float
    true_age: float
    threshold: float | None


def _seconds(ts: Any) -> float:
    """fastavro gives timestamp-millis as an aware datetime; raw ints are milliseconds."""
    if hasattr(ts, "timestamp"):
        return float(ts.timestamp())
    return float(ts) / 1000.0


def _mean(xs: Iterable[float]) -> float | None:
    vals = list(xs)
    return sum(vals) / len(vals) if vals else None


def summarize(samples: Iterable[Sample]) -> dict[str, Any]:
    """Offline definitions applied to joined decisions; rates are None when nobody is eligible."""
    s = list(samples)
    minors = [x for x in s if x.threshold is not None and x.true_age < x.threshold]
    near = [x for x in s if x.threshold is not None and x.threshold <= x.true_age < x.threshold + NEAR_SPAN_YEARS]
    actions: dict[str, int] = {}
    for x in s:
        actions[x.action] = actions.get(x.action, 0) + 1
    return {
        "n": len(s),
        "mae": _mean(abs(x.estimate - x.true_age) for x in s),
        "mean_signed_error": _mean(x.estimate - x.true_age for x in s),
        "under_age_pass_rate": _mean(float(x.action == "ALLOW") for x in minors),
        "n_under_age": len(minors),
        "false_rejection_rate": _mean(float(x.action in REJECTING) for x in near),
        "n_near_threshold": len(near),
        "fallback_rate": _mean(float(x.action == "REQUIRE_VERIFICATION") for x in s),
        "action_rates": {a: c / len(s) for a, c in sorted(actions.items())},
    }


@dataclass
class OnlineMetrics:
    """The join and the rolling windows; pure (no Kafka, no clock), so it is tested directly."""

    window_s: float = 7 * DAY_S
    join_window_s: float = 30 * DAY_S
    max_users: int = 1_000_000
    reference_size: int = 1000
    current_size: int = 1000
    psi_alert: float = DEFAULT_PSI_ALERT
    watermark: float = -math.inf  # latest event time seen
    joined_total: int = 0
    samples: deque[Sample] = field(default_factory=deque)
    _pending: OrderedDict[str, list[DecisionFact]] = field(default_factory=OrderedDict)
    _truth: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)  # user -> (age, at)
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _reference: list[float] = field(default_factory=list)
    _current: deque[float] = field(default_factory=deque)

    def add_decision(self, d: DecisionFact) -> list[Sample]:
        if d.key in self._seen:
            return []
        self._remember(d.key)
        self._advance(d.event_time)
        if d.age_mean is None or d.verified:
            return []  # nothing estimated, or already the truth: not a model outcome
        self._observe_estimate(d.age_mean)
        truth = self._truth.get(d.user_id)
        if truth is not None and d.event_time <= truth[1]:
            return self._emit([d], truth)
        bucket = self._pending.setdefault(d.user_id, [])
        bucket.append(d)
        self._pending.move_to_end(d.user_id)
        self._bound(self._pending)
        return []

    def add_feedback(self, user_id: str, verified_age: float, occurred_at: float) -> list[Sample]:
        self._advance(occurred_at)
        prev = self._truth.get(user_id)
        if prev is None or occurred_at >= prev[1]:
            self._truth[user_id] = (verified_age, occurred_at)
            self._truth.move_to_end(user_id)
            self._bound(self._truth)
        waiting = self._pending.pop(user_id, [])
        ready = [d for d in waiting if d.event_time <= occurred_at]
        later = [d for d in waiting if d.event_time > occurred_at]
        if later:
            self._pending[user_id] = later
        return self._emit(ready, (verified_age, occurred_at))

    def _emit(self, decisions: list[DecisionFact], truth: tuple[float, float]) -> list[Sample]:
        age, at = truth
        out = []
        for d in decisions:
            assert d.age_mean is not None
            # A sample enters the window when it is labelled, so a late verification still counts.
            s = Sample(
                max(d.event_time, at),
                d.jurisdiction,
                d.surface,
                d.action,
                float(d.age_mean),
                age - (at - d.event_time) / YEAR_S,
                d.threshold,
            )
            out.append(s)
            self.samples.append(s)
        self.joined_total += len(out)
        self._evict()
        return out

    def _observe_estimate(self, age: float) -> None:
        if len(self._reference) < self.reference_size:
            self._reference.append(age)
            return
        self._current.append(age)
        while len(self._current) > self.current_size:
            self._current.popleft()

    def _advance(self, t: float) -> None:
        if t > self.watermark:
            self.watermark = t
            self._evict()

    def _evict(self) -> None:
        horizon = self.watermark - self.window_s
        # samples arrive roughly in event-time order; a late one is evicted when it reaches the front
        while self.samples and self.samples[0].time < horizon:
            self.samples.popleft()
        join_horizon = self.watermark - self.join_window_s
        for user in [u for u, ds in self._pending.items() if ds and ds[-1].event_time < join_horizon][:1000]:
            del self._pending[user]

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        while len(self._seen) > self.max_users * 4:
            self._seen.popitem(last=False)

    def _bound(self, od: OrderedDict[str, Any]) -> None:
        while len(od) > self.max_users:
            od.popitem(last=False)

    def drift(self) -> dict[str, Any]:
        ready = len(self._reference) >= self.reference_size and len(self._current) >= self.current_size
        psi = population_stability_index(self._reference, list(self._current)) if ready else None
        return {
            "psi": psi,
            "alert": bool(psi is not None and psi > self.psi_alert),
            "threshold": self.psi_alert,
            "reference_n": len(self._reference),
            "current_n": len(self._current),
        }

    def snapshot(self) -> dict[str, Any]:
        window = [s for s in self.samples if s.time >= self.watermark - self.window_s]
        cohorts: dict[str, list[Sample]] = {}
        for s in window:
            cohorts.setdefault(f"{s.jurisdiction}/{s.surface}", []).append(s)
        bands = {}
        for lo, hi in AGE_BANDS:
            sel = [s for s in window if lo <= s.true_age < hi]
            bands[band_label(lo, hi)] = {"n": len(sel), "mae": _mean(abs(s.estimate - s.true_age) for s in sel)}
        return {
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
            "window_s": self.window_s,
            "joined_total": self.joined_total,
            "pending_users": len(self._pending),
            "overall": summarize(window),
            "cohorts": {k: summarize(v) for k, v in sorted(cohorts.items())},
            "by_age_band": bands,
            "drift": self.drift(),
        }


class Exporter:
    """Prometheus gauges mirroring `OnlineMetrics.snapshot()`; labels are bounded (policy cohorts)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["jurisdiction", "surface"]
        # Rolling-window MAE of estimates against verified ages, per cohort (all/all = overall).
        self.mae = Gauge("agegate_online_mae_years", "Online MAE vs verified ages", labels, registry=registry)
        # Rolling-window mean signed error (positive: the model overestimates, which lets minors through).
        self.mse = Gauge(
            "agegate_online_mean_signed_error_years", "Online mean signed error", labels, registry=registry
        )
        # Decisions labelled with a verified age inside the window.
        self.joined = Gauge(
            "agegate_online_joined_decisions", "Labelled decisions in window", labels, registry=registry
        )
        # under_age_pass: ALLOW for users under the threshold; false_rejection: RESTRICT/BLOCK of T..T+2;
        # fallback: REQUIRE_VERIFICATION among all labelled decisions.
        self.errors = Gauge(
            "agegate_online_error_rate", "Online threshold error rates", [*labels, "kind"], registry=registry
        )
        # Share of each action among labelled decisions.
        self.actions = Gauge(
            "agegate_online_action_rate", "Online action rates", [*labels, "action"], registry=registry
        )
        # Population stability index of recent estimates vs the reference window.
        self.psi = Gauge("agegate_estimate_psi", "PSI of estimates vs reference", registry=registry)
        # 1 when the PSI exceeds its alert threshold.
        self.drift_alert = Gauge("agegate_estimate_drift_alert", "Estimate drift alert", registry=registry)

    def update(self, snap: Mapping[str, Any]) -> None:
        cohorts = {(ALL, ALL): snap["overall"]}
        for key, v in snap["cohorts"].items():
            j, s = key.split("/", 1)
            cohorts[(j, s)] = v
        for (j, s), v in cohorts.items():
            self.joined.labels(j, s).set(v["n"])
            if v["mae"] is not None:
                self.mae.labels(j, s).set(v["mae"])
                self.mse.labels(j, s).set(v["mean_signed_error"])
            for kind in ("under_age_pass", "false_rejection", "fallback"):
                rate = v[f"{kind}_rate"]
                if rate is not None:
                    self.errors.labels(j, s, kind).set(rate)
            for action, rate in v["action_rates"].items():
                self.actions.labels(j, s, action).set(rate)
        drift = snap["drift"]
        if drift["psi"] is not None:
            self.psi.set(drift["psi"])
        self.drift_alert.set(1.0 if drift["alert"] else 0.0)


def consume(
    consumer: Any,
    codec: Any,
    state: OnlineMetrics,
    *,
    decisions_topic: str,
    feedback_topic: str,
    stop: threading.Event,
    max_messages: int | None = None,
    idle_exit_s: float | None = None,
    on_update: Callable[[OnlineMetrics, list[Sample]], None] | None = None,
    poll_s: float = 0.5,
) -> int:
    """Feed both topics into `state` until stopped, `max_messages` read, or idle for `idle_exit_s`.

    An undecodable message is logged and skipped: this is a read-only observer, dead-lettering is the
    worker's job. Returns the number of messages read."""
    from stream.core.subjects import DECISION, FEEDBACK
    from stream.errors import DecodeError

    read = 0
    last = time.monotonic()
    while not stop.is_set() and (max_messages is None or read < max_messages):
        msg = consumer.poll(poll_s)
        if msg is None:
            if idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                break
            continue
        if msg.error():
            log.warning("consumer error: %s", msg.error())
            continue
        read += 1
        last = time.monotonic()
        try:
            if msg.topic() == decisions_topic:
                new = state.add_decision(DecisionFact.from_record(codec.decode(msg.value(), DECISION).record))
            elif msg.topic() == feedback_topic:
                r = codec.decode(msg.value(), FEEDBACK).record
                new = state.add_feedback(str(r["user_id"]), float(r["verified_age"]), _seconds(r["occurred_at"]))
            else:
                continue
        except (DecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "skipping undecodable message on %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc
            )
            continue
        if on_update is not None:
            on_update(state, new)
    return read


def add_arguments(parser: Any) -> None:
    """Options of `agegate eval --online` (added to eval's parser as an argument group)."""
    parser.add_argument("--metrics-port", type=int, default=9464, help="Prometheus port (0: do not serve)")
    parser.add_argument("--window-days", type=float, default=7.0, help="rolling window of online metrics")
    parser.add_argument(
        "--join-window-days", type=float, default=30.0, help="how long a decision waits for its user's verified age"
    )
    parser.add_argument(
        "--reference-size", type=int, default=1000, help="first N estimates form the drift reference window"
    )
    parser.add_argument("--current-size", type=int, default=1000, help="latest N estimates form the current window")
    parser.add_argument("--psi-alert", type=float, default=DEFAULT_PSI_ALERT, help="PSI above which drift alerts")
    parser.add_argument(
        "--idle-exit-s",
        type=float,
        default=None,
        help="exit after this long without messages (batch runs); default: run until SIGTERM",
    )
    parser.add_argument("--max-messages", type=int, default=None, help="exit after reading this many messages")
    parser.add_argument("--snapshot", type=Path, default=None, help="write the final metrics as JSON here")
    parser.add_argument("--group", default="agegate-online-metrics", help="consumer group (no offsets are committed)")


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer
    from prometheus_client import start_http_server

    from stream.adapters.codec import AvroCodec
    from stream.adapters.confluent_registry import registry_from_settings
    from stream.adapters.topics import topic_name
    from stream.config import load_settings
    from stream.metrics import ONLINE_ABS_ERROR_YEARS, REGISTRY

    settings = load_settings()
    decisions, feedback = topic_name("decisions", settings), topic_name("feedback", settings)
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([decisions, feedback])
    state = OnlineMetrics(
        window_s=args.window_days * DAY_S,
        join_window_s=args.join_window_days * DAY_S,
        reference_size=args.reference_size,
        current_size=args.current_size,
        psi_alert=args.psi_alert,
    )
    exporter = Exporter(REGISTRY)
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=REGISTRY)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    last_export = 0.0

    def on_update(st: OnlineMetrics, new: list[Sample]) -> None:
        nonlocal last_export
        for s in new:
            ONLINE_ABS_ERROR_YEARS.observe(abs(s.estimate - s.true_age))
        if time.monotonic() - last_export > 5.0:  # the snapshot walks the window: not per message
            exporter.update(st.snapshot())
            last_export = time.monotonic()

    try:
        n = consume(
            consumer,
            AvroCodec(registry_from_settings(settings)),
            state,
            decisions_topic=decisions,
            feedback_topic=feedback,
            stop=stop,
            max_messages=args.max_messages,
            idle_exit_s=args.idle_exit_s,
            on_update=on_update,
        )
    finally:
        consumer.close()
    snap = state.snapshot()
    exporter.update(snap)
    if args.snapshot:
        args.snapshot.write_text(json.dumps(snap, indent=1))
    print(f"read {n} messages; {snap['joined_total']} decisions labelled; window MAE {snap['overall']['mae']}")
    return 0
