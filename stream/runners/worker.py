"""`agegate worker`: the faust app that runs the enforcement pipeline in deployed pods.

faust (aiokafka transport) owns group membership, fetching, heartbeats and the web server. The
guarantees are ours, because faust's do not hold on their own:
- input arrives in batches (`noack_take`: up to a micro-batch of events, or what came within the
  batch wait) that are not acked by faust; the one driver (stream/runners/driver.py) runs each
  batch through the pipeline and releases finished events in offset order per partition, and only
  then are they acked, so faust never commits past an event still in flight (its gap check is
  skipped while the committed offset is 0 or None; see tests/unit/test_faust_traps.py);
- `take()`/`take_events()` are not used: they ack a whole batch when the batch body returns (or
  raises), before its decisions exist;
- decisions and dead letters are produced with confluent-kafka and awaited until acknowledged
  (faust's send future does not tell us the broker has the message); the confluent *transport* is
  not used since it drops headers;
- `exactly_once` is not offered through faust (open duplicate bugs); at-least-once plus idempotent
  Redis updates and decision idempotency keys is the guarantee;
- a flood of invalid input (the invalid-share guard trips) pauses input instead of exiting: what
  was handled is committed at once, /readyz says why, and `POST /resume` (or a restart) resumes.
  Exiting would commit nothing, and every restart would write the same dead letters again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from stream import metrics
from stream.adapters.topics import topic_name
from stream.config import Settings, load_settings
from stream.log import get_logger
from stream.pipeline.ports import SourceRecord, record_headers
from stream.runners.driver import Done, Driver
from stream.runners.gc_pauses import freeze_startup_heap, observe_pauses
from stream.runners.interpreter import enter_runtime
from stream.runners.preflight import preflight, topic_checks

log = get_logger("agegate.worker")
EXIT_FATAL = 3
EXIT_GRACE_EXCEEDED = 4


def source_record(message: Any) -> SourceRecord:
    """A faust message as the pipeline's transport-neutral record."""
    return SourceRecord(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        int(message.timestamp * 1000) if message.timestamp else 0,
        record_headers(getattr(message, "headers", None)),
    )


class WorkerRuntime:
    """Everything the faust agent needs, created once the model is loaded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_loaded = asyncio.Event()
        self.redis_ok_at = 0.0
        self.assembled: Any = None
        self.driver: Driver[tuple[Any, Any]] | None = None  # payload: (faust stream, event) to ack
        self.sink: Any = None
        self.redis: Any = None
        self.engine: Any = None
        self.paused_reason: str | None = None
        self.app: Any = None  # the faust app, set by create_app
        self.revocations = 0  # partition revocations so far: an event held across one is stale

    async def start(self) -> None:
        """Load the model (retrying while it is missing: events wait), connect Redis and Kafka."""
        from stream.adapters.kafka_sink import KafkaSink
        from stream.pipeline.assemble import (
            assemble,
            ensure_shadow_topic,
            load_engine_when_ready,
            make_store,
            redis_client,
        )

        self.engine = await load_engine_when_ready(
            self.settings,
            on_wait=lambda error, attempt: log.error(
                "model not loadable; no event is processed until it is", error=str(error), attempt=attempt
            ),
        )
        self.redis = redis_client(self.settings)
        self.sink = KafkaSink(self.settings)
        self.assembled = assemble(
            self.settings,
            model=self.engine,
            store=make_store(self.settings, self.redis),
            sink=self.sink,
            with_shadow=True,  # scores the shadow model too, when AGEGATE_SHADOW_MODEL is set
            retain_frames=True,  # consenting users' scored frames go to the retained-frames topic
        )
        if self.assembled.has_shadow:
            await asyncio.to_thread(ensure_shadow_topic, self.settings)
        self.assembled.start()
        self.driver = Driver(
            self.assembled.pipeline.process,
            max_in_flight=self.assembled.max_in_flight,
            max_in_flight_bytes=self.assembled.max_in_flight_bytes,
            release=self._release,
            on_error=self._failed,
        )
        self.driver.start()
        frozen = freeze_startup_heap()  # everything long-lived exists now (see gc_pauses.py)
        self.model_loaded.set()
        log.info(
            "model loaded",
            model_version=self.engine.model_version,
            device=str(self.engine.device),
            policy_version=self.assembled.policy.version,
            gc_frozen_objects=frozen,
        )
        metrics.set_build_info(model_version=self.engine.model_version, policy_version=self.assembled.policy.version)

    async def admit(self, stream: Any, events: Sequence[Any]) -> None:
        """Take a batch in; blocks while the driver is full (backpressure) or input is paused."""
        await self.model_loaded.wait()
        assert self.driver is not None
        revocations = self.revocations
        batch = [(source_record(event.message), (stream, event)) for event in events]
        while True:
            if self.driver.paused:
                await self.driver.wait_open()
                if self.revocations != revocations:
                    # Held unread through a rebalance: the partitions restart from the committed
                    # offset (ours again, or another worker's), so this copy is dropped, not acked.
                    return
            if await self.driver.submit(batch):
                break  # else paused while it waited for room: the batch stays unread
        metrics.IN_FLIGHT_EVENTS.set(self.driver.in_flight)

    async def _release(self, done: Sequence[Done[tuple[Any, Any]]]) -> None:
        """Ack finished events in offset order; close the input first if the invalid share tripped
        (the driver frees these events' room only after this returns, so nothing more is admitted)."""
        paused_now = False
        tripped = self.assembled.pipeline.guard.tripped
        if tripped is not None and self.paused_reason is None:
            self.pause(tripped)
            paused_now = True
        for item in done:
            stream, event = item.payload
            await stream.ack(event)
        assert self.driver is not None
        metrics.IN_FLIGHT_EVENTS.set(self.driver.in_flight - len(done))
        if paused_now and self.app is not None:
            # Keep our place now, not at the next commit tick: a restart must not redo these.
            await self.app.consumer.commit()

    def _failed(self, exc: BaseException) -> None:
        """A batch raised (a bug): never ack what was not handled; stop loudly."""
        log.error("event processing failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        self.fatal(exc)

    def pause(self, reason: str) -> None:
        """Stop taking input (events in flight still finish and are committed) until `resume`."""
        self.paused_reason = reason
        if self.driver is not None:
            self.driver.pause()
        if self.app is not None:
            # faust waits for every event it handed out to be acked before a rebalance or stop;
            # the ones held unread at the closed input never will be, so do not wait while paused.
            self.app.conf.stream_wait_empty = False
        metrics.INPUT_PAUSED.set(1)
        log.error("input paused: invalid share exceeded; POST /resume or restart once fixed", reason=reason)

    def resume(self) -> bool:
        """Take input again with a fresh invalid-share window; False when input was not paused."""
        if self.paused_reason is None:
            return False
        self.assembled.pipeline.guard.reset()
        self.paused_reason = None
        if self.app is not None:
            self.app.conf.stream_wait_empty = True
        metrics.INPUT_PAUSED.set(0)
        if self.driver is not None:
            self.driver.resume()
        log.warning("input resumed by an operator")
        return True

    def fatal(self, exc: BaseException) -> None:
        """Stop loudly without committing anything not finished: redelivery covers the rest."""
        log.critical("worker stopping on a fatal error", error=f"{type(exc).__name__}: {exc}")
        if self.sink is not None:
            self.sink.flush(5)
        sys.stderr.flush()
        os._exit(EXIT_FATAL)

    async def ready(self, app: Any) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"model_loaded": self.model_loaded.is_set()}
        try:
            checks["partitions_assigned"] = len(app.consumer.assignment()) > 0
        except Exception:
            checks["partitions_assigned"] = False
        if self.redis is not None and time.monotonic() - self.redis_ok_at > 2:
            try:
                await asyncio.wait_for(self.redis.ping(), timeout=1)
                self.redis_ok_at = time.monotonic()
            except Exception:
                self.redis_ok_at = 0.0
        checks["redis_reachable"] = self.redis_ok_at > 0
        checks["input_open"] = self.paused_reason is None
        checks.update(await asyncio.to_thread(topic_checks, self.settings))  # topics_ready (+ topics_reason)
        ok = all(checks.values())
        metrics.READY.set(1 if ok else 0)
        if self.paused_reason is not None:
            checks["paused_reason"] = self.paused_reason
        return ok, checks

    async def stop(self) -> None:
        if self.driver is not None:
            await self.driver.stop()
        if self.assembled is not None:
            await self.assembled.stop()
        if self.sink is not None:
            self.sink.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self.engine is not None:
            self.engine.close()  # its decode processes, if any, exit with the worker


def create_app(settings: Settings) -> tuple[Any, WorkerRuntime]:
    import faust
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from stream.pipeline.assemble import consumer_batch, consumer_buffer_events
    from stream.runners.faust_app import app_class

    broker = ";".join(f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(","))
    app = app_class(settings.fetch_min_bytes, settings.fetch_max_wait_ms)(
        settings.consumer_group,
        broker=broker,
        broker_credentials=_credentials(settings),
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_port=settings.web_port,
        web_bind="0.0.0.0",
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=True,
        stream_buffer_maxsize=consumer_buffer_events(settings),
        broker_commit_every=200,
        broker_commit_interval=1.0,
        datadir=os.environ.get("AGEGATE_FAUST_DATADIR", tempfile.mkdtemp(prefix="agegate-faust-")),
        producer_acks=-1,
    )
    runtime = WorkerRuntime(settings)
    runtime.app = app
    sources = app.topic(
        *(topic_name(role, settings) for role in ("signups", "uploads", "feedback")),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    batch_events, batch_wait_s = consumer_batch(settings)

    @app.agent(sources, concurrency=1)
    async def enforce(stream: Any) -> None:
        # Batches of events faust does not ack: the driver acks each once its decision is stored.
        async for events in stream.noack_take(batch_events, within=batch_wait_s):
            await runtime.admit(stream, events)

    @app.task
    async def load_model() -> None:
        await runtime.start()

    @app.timer(interval=5.0)
    async def lag() -> None:
        await report_lag(app)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "alive"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ok, checks = await runtime.ready(app)
        return web.json({"ready": ok, **checks}, status=200 if ok else 503)

    class Resume(faust.web.View):
        """POST /resume: take input again after an invalid-share pause (the cause fixed or understood)."""

        async def post(self, request: Any) -> Any:
            resumed = runtime.resume()
            return self.json({"resumed": resumed}, status=200 if resumed else 409)

    app.page("/resume")(Resume)

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's stub wants a keyword `signal`
    async def forget_revoked(app_: Any, revoked: Any, **kwargs: Any) -> None:
        runtime.revocations += 1
        for tp in revoked:
            if runtime.driver is not None:
                runtime.driver.forget(tp.topic, tp.partition)
            with contextlib.suppress(KeyError):  # no lag reported for it yet
                metrics.CONSUMER_LAG.remove(tp.topic, str(tp.partition))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_runtime(app_: Any, **kwargs: Any) -> None:
        await runtime.stop()

    return app, runtime


async def report_lag(app: Any) -> None:
    """Consumer lag per assigned partition (high watermark - position), for dashboards and alerts."""
    assigned = sorted(app.consumer.assignment())
    if not assigned:
        return
    highwaters = await app.consumer.highwaters(*assigned)
    for tp in assigned:
        position = await app.consumer.position(tp)
        if position is not None and tp in highwaters:
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwaters[tp] - position))


def _credentials(settings: Settings) -> Any:
    import faust

    if not settings.kafka_security_protocol.startswith("SASL") and settings.kafka_security_protocol != "SSL":
        return None
    ssl_context = None
    if settings.kafka_security_protocol.endswith("SSL"):
        import ssl

        ssl_context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(ssl_context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=ssl_context,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loglevel", default=None, help="faust's log level (default: AGEGATE_LOG_LEVEL)")


def _worker_class() -> Any:
    import faust

    class GracefulWorker(faust.Worker):
        """SIGTERM starts the graceful stop and a watchdog: past `shutdown_grace_s` the process exits
        (code 4) without committing anything unfinished, before Kubernetes' SIGKILL would."""

        grace_s: float = 25.0

        def _on_sigterm(self) -> None:
            if not self._signal_stop_time:
                timer = threading.Timer(self.grace_s, _grace_exceeded, args=(self.grace_s,))
                timer.daemon = True
                timer.start()
            super()._on_sigterm()

    return GracefulWorker


def _grace_exceeded(grace_s: float) -> None:
    log.critical("shutdown grace exceeded; exiting without committing unfinished events", grace_s=grace_s)
    sys.stderr.flush()
    os._exit(EXIT_GRACE_EXCEEDED)


def run(args: argparse.Namespace) -> int:
    from stream.adapters.kafka_wait import wait_for_kafka

    settings = load_settings()
    preflight(settings)  # policy and settings checked before joining the group (ConfigError: exit code 2)
    observe_pauses()  # agegate_gc_pause_seconds, for the life of the process
    loop = enter_runtime(settings)  # stays current: faust (mode) runs on the event loop it finds
    loop.run_until_complete(wait_for_kafka(settings))
    app, _ = create_app(settings)
    worker_class = _worker_class()
    worker_class.grace_s = settings.shutdown_grace_s
    worker = worker_class(
        app,
        loglevel=(args.loglevel or settings.log_level).lower(),
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
    )
    worker.spinner = None  # faust's terminal spinner writes control sequences (BS, ESC[?25h) into the log
    # SIGTERM/SIGINT: stop fetching, wait for in-flight events, commit, exit (within the grace).
    worker.execute_from_commandline()
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - entry for `python -m`
    from stream.cli import main as cli_main

    return cli_main(["worker", *(argv or [])])
