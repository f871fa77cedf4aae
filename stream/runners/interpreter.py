"""What a runner sets for its whole process before its event loop starts: which loop and how long a
thread may keep the interpreter lock. The worker and the replay tool run the same pipeline, so both
take them from the same settings (AGEGATE_EVENT_LOOP, AGEGATE_SWITCH_INTERVAL_MS). Whether idle
OpenMP threads spin is set earlier still, before torch loads: `stream.cli.let_idle_openmp_threads_sleep`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from stream.config import Settings
from stream.errors import ConfigError

T = TypeVar("T")


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """The loop a runner (the worker, the replay tool) runs on, and the kind every later loop of the
    process gets (faust's consumer thread makes its own). uvloop's is libuv's: its callbacks, sockets
    and timers cost less interpreter time per event, which is what the event loop's thread is short
    of (bench/worker.py)."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError as exc:  # uvloop is a dependency wherever it builds (not on Windows)
            raise ConfigError(["event_loop: uvloop is not installed here; set AGEGATE_EVENT_LOOP=asyncio"]) from exc
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)  # the standard policy, whatever was set before
    return asyncio.new_event_loop()


def set_switch_interval(ms: float) -> None:
    """How long a thread may keep the interpreter lock while another waits for it, process-wide.

    The prepare (decode) and inference threads each need the lock back a few times per pass, and
    each time wait for the event loop's thread to be made to yield it. At Python's 5 ms the decoder
    process sat idle half the time on a backlog. 1 ms gave the no-op-model worker (a stand-in for a
    GPU) 2,020-2,133 events/s against 1,526-1,836 at 5 ms, in alternating backlog runs of
    bench/worker.py's `worker_run`, and changed nothing measurable with the CPU model;
    `python bench/worker.py --switch-ms 5` puts both side by side (`worker-noop switch5`)."""
    sys.setswitchinterval(ms / 1000)


def enter_runtime(settings: Settings) -> asyncio.AbstractEventLoop:
    """The worker's way in: the configured switch interval, and the configured loop made current
    (faust runs on the loop it finds) and returned."""
    set_switch_interval(settings.switch_interval_ms)
    loop = new_event_loop(settings.event_loop)
    asyncio.set_event_loop(loop)
    return loop


def run_async(main: Coroutine[Any, Any, T], settings: Settings) -> T:
    """`asyncio.run(main)` on the configured loop, with the configured switch interval."""
    set_switch_interval(settings.switch_interval_ms)
    with asyncio.Runner(loop_factory=lambda: new_event_loop(settings.event_loop)) as runner:
        return runner.run(main)
