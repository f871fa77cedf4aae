"""The worker's event loop: uvloop by default, for the main loop and for faust's consumer thread too.

faust's consumer thread (mode's ServiceThread) makes its own loop with `asyncio.new_event_loop()`.
A worker that only handed its main loop to uvloop would leave fetching on the standard loop, which
is what the first version did; these tests hold both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop
from mode.threads import ServiceThread

from stream.config import load_settings
from stream.errors import ConfigError
from stream.runners.worker import new_event_loop


@pytest.fixture(autouse=True)
def restore_policy() -> Iterator[None]:
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)


def consumer_thread_loop(main: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    """The loop faust's consumer thread would run on: mode's ServiceThread makes it, as it does there."""
    asyncio.set_event_loop(main)
    try:
        return ServiceThread(loop=main).thread_loop
    finally:
        asyncio.set_event_loop(None)


def test_uvloop_runs_the_main_loop_and_faust_s_consumer_thread() -> None:
    main = new_event_loop("uvloop")
    other = consumer_thread_loop(main)
    try:
        assert isinstance(main, uvloop.Loop)
        assert isinstance(other, uvloop.Loop)
        assert main.run_until_complete(asyncio.sleep(0, result="ran")) == "ran"
    finally:
        main.close()
        other.close()


def test_asyncio_keeps_the_standard_loop_everywhere() -> None:
    main = new_event_loop("asyncio")
    other = consumer_thread_loop(main)
    try:
        assert not isinstance(main, uvloop.Loop)
        assert not isinstance(other, uvloop.Loop)
    finally:
        main.close()
        other.close()


def test_the_default_is_uvloop_and_an_unknown_loop_is_a_config_error() -> None:
    assert load_settings({}).event_loop == "uvloop"
    with pytest.raises(ConfigError, match=r"AGEGATE_EVENT_LOOP|event_loop"):
        load_settings({"AGEGATE_EVENT_LOOP": "tokio"})
