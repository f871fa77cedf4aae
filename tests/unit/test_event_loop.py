"""What a runner sets for its process: the event loop (uvloop by default, for the main loop and for
faust's consumer thread too), the interpreter's switch interval, and OpenMP's wait policy.

faust's consumer thread (mode's ServiceThread) makes its own loop with `asyncio.new_event_loop()`.
A worker that only handed its main loop to uvloop would leave fetching on the standard loop, which
is what the first version did; these tests hold both.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import uvloop
from mode.threads import ServiceThread

from stream.config import load_settings
from stream.errors import ConfigError
from stream.runners.interpreter import enter_runtime, new_event_loop, run_async, set_switch_interval


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


def test_without_uvloop_installed_the_error_says_which_setting_to_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets where it is not installed
    with pytest.raises(ConfigError, match="set AGEGATE_EVENT_LOOP=asyncio"):
        new_event_loop("uvloop")
    assert not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)


@pytest.fixture
def restore_switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("restore_switch_interval")
def test_the_switch_interval_is_set_in_milliseconds_and_defaults_below_python_s() -> None:
    default = load_settings({}).switch_interval_ms
    set_switch_interval(default)
    assert sys.getswitchinterval() == pytest.approx(default / 1000)
    assert default < 5.0  # Python's own 5 ms left the decoder idle half the time (worker.py)
    set_switch_interval(0.25)
    assert sys.getswitchinterval() == pytest.approx(0.00025)
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="switch_interval_ms: must be > 0"):
            load_settings({"AGEGATE_SWITCH_INTERVAL_MS": bad})


@pytest.mark.usefixtures("restore_switch_interval")
def test_a_runner_s_coroutine_runs_on_the_configured_loop_and_switch_interval() -> None:
    """The replay tool runs this way, so a backfill gets the worker's loop and interval."""

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    settings = load_settings({"AGEGATE_SWITCH_INTERVAL_MS": "2"})
    assert issubclass(run_async(loop_type(), settings), uvloop.Loop)
    assert sys.getswitchinterval() == pytest.approx(0.002)
    assert not issubclass(run_async(loop_type(), load_settings({"AGEGATE_EVENT_LOOP": "asyncio"})), uvloop.Loop)


@pytest.mark.usefixtures("restore_switch_interval")
def test_the_worker_enters_its_runtime_with_the_configured_interval_and_a_current_loop() -> None:
    loop = enter_runtime(load_settings({"AGEGATE_SWITCH_INTERVAL_MS": "3"}))
    try:
        assert sys.getswitchinterval() == pytest.approx(0.003)
        assert isinstance(loop, uvloop.Loop)
        assert asyncio.get_event_loop_policy().get_event_loop() is loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()


# Run as `python -c`: records OMP_WAIT_POLICY at the moment torch is first imported, then runs the
# command's `--help` (which imports the command's module, and with it torch for worker and replay).
_OPENMP_PROBE = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Spy())
from stream import cli
try:
    cli.main([sys.argv[1], "--help"])
except SystemExit:
    pass
import torch
print(seen)
"""


def _policy_when_torch_loads(command: str, environ: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _OPENMP_PROBE, command], env=environ, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["worker", "replay"])
def test_pipeline_commands_let_idle_openmp_threads_sleep_before_torch_loads_unless_the_operator_chose(
    command: str,
) -> None:
    """libgomp reads OMP_WAIT_POLICY once, when torch loads it: set any later, it changes nothing."""
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy_when_torch_loads(command, environ) == "['PASSIVE']"
    assert _policy_when_torch_loads(command, {**environ, "OMP_WAIT_POLICY": "ACTIVE"}) == "['ACTIVE']"


def test_other_commands_leave_openmp_s_wait_policy_alone() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy_when_torch_loads("eval", environ) == "[None]"
