"""The worker's event loop: uvloop by default, for the main loop and for faust's consumer thread too.

faust's consumer thread (mode's ServiceThread) makes its own loop with `asyncio.new_event_loop()`.
A worker that only handed its main loop to uvloop would leave fetching on the standard loop, which
is what the first version did; these tests hold both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import uvloop

from stream.config import load_settings
from stream.errors import ConfigError
from stream.runners.worker import new_event_loop


@pytest.fixture(autouse=True)
def restore_policy() -> Iterator[None]:
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)


def loop_made_in_a_thread() -> asyncio.AbstractEventLoop:
    made: list[asyncio.AbstractEventLoop] = []
    thread = threading.Thread(target=lambda: made.append(asyncio.new_event_loop()))
    thread.start()
    thread.join()
    return made[0]


def test_uvloop_runs_the_main_loop_and_the_loops_threads_make_later() -> None:
    main = new_event_loop("uvloop")
    other = loop_made_in_a_thread()
    try:
        assert isinstance(main, uvloop.Loop)
        assert isinstance(other, uvloop.Loop)
        assert main.run_until_complete(asyncio.sleep(0, result="ran")) == "ran"
    finally:
        main.close()
        other.close()


def test_asyncio_keeps_the_standard_loop_everywhere() -> None:
    main = new_event_loop("asyncio")
    other = loop_made_in_a_thread()
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
