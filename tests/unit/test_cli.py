"""The `agegate` command line as people meet it: fast help, a version, completion, and every error
they can cause reported as one line with a documented exit code and no traceback.

Each test runs the CLI as a subprocess (`python -m stream.cli`), as a shell would. Kafka is pointed
at a closed port: a command that tried to reach it before validating its input would hang or say
"unreachable" instead of the expected line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli import COMMANDS, build_parser
from stream.errors import EXIT_UNAVAILABLE, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]
CLOSED = "127.0.0.1:1"  # nothing listens on port 1


def agegate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AGEGATE_")}
    base |= {"PYTHONPATH": str(ROOT), "KAFKA_BOOTSTRAP_SERVERS": CLOSED, "AGEGATE_LOG_FORMAT": "console"}
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def one_error_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The run failed with `code`, said so in exactly one stderr line containing the needles, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- the parser -----------------------------------------------------------------------------------


def test_importing_the_cli_and_its_help_load_no_heavy_library() -> None:
    code = (
        "import sys, contextlib, io\n"
        "import stream.cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    stream.cli.main(['--help'])\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    stream.cli.main(['--version'])\n"
        "print(sorted(m for m in ('torch', 'faust', 'confluent_kafka', 'aiokafka', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_version_flag_prints_the_package_version() -> None:
    from stream import __version__

    result = agegate("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"agegate {__version__}"


def test_no_command_prints_help_and_exits_with_the_usage_code() -> None:
    result = agegate()
    assert result.returncode == EXIT_USAGE
    assert "exit codes:" in result.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_every_command_has_help(name: str) -> None:
    sub = _subparser(name)
    undocumented = [a.option_strings or a.dest for a in sub._actions if not a.help]
    assert not undocumented
    assert sub.description  # what `agegate NAME --help` says the command does


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(only=name)
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = action.choices[name]
    return sub


def test_help_shows_defaults() -> None:
    help_text = _subparser("produce").format_help()
    assert "frames per event (default: 2)" in help_text
    assert "(default: 0)" in help_text  # --seed


def test_completion_script_is_generated_for_bash() -> None:
    result = agegate("completion", "bash")
    assert result.returncode == 0, result.stderr
    assert "complete" in result.stdout
    assert "agegate" in result.stdout


def test_completion_answers_with_a_commands_options() -> None:
    env = {
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": "agegate policy ",
        "COMP_POINT": str(len("agegate policy ")),
        "_ARGCOMPLETE_STDOUT_FILENAME": "/dev/stdout",
    }
    result = agegate(**env)
    assert result.returncode == 0, result.stderr
    assert "check" in result.stdout.split("\n")


# --- one line per error class ---------------------------------------------------------------------


def test_config_error_is_one_line_with_exit_code_2() -> None:
    one_error_line(agegate("worker", AGEGATE_WEB_PORT="70000"), EXIT_USAGE, "agegate worker:", "web_port", "65535")
    one_error_line(agegate("config", "show", AGEGATE_LOG_LEVEL="loud"), EXIT_USAGE, "AGEGATE_LOG_LEVEL", "loud")


def test_bad_policy_stops_the_worker_before_it_joins_the_group(tmp_path: Path) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text(
        'version = "x"\ndefault_jurisdiction = "NOWHERE"\n[jurisdictions.DEFAULT.surfaces.chat]\nmin_age = 300\n'
    )
    # Kafka is closed: had the worker tried to join first, it would wait for Kafka, not exit.
    line = one_error_line(
        agegate("worker", AGEGATE_POLICY=str(bad), AGEGATE_MODEL=str(tmp_path)),
        EXIT_USAGE,
        "agegate worker:",
        "policy",
        str(bad),
    )
    assert "min_age" in line
    one_error_line(agegate("policy", "check", str(bad)), EXIT_USAGE, "invalid policy", "min_age")


def test_policy_check_prints_the_threshold_table() -> None:
    result = agegate("policy", "check")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["jurisdiction", "surface", "min_age", "buffer", "allow_at", "confidence", "under_age_action"] in rows
    assert ["DEFAULT", "adult_content", "18", "2", "20", "0.95", "BLOCK"] in rows
    # The footgun is spelled out per surface: one confidence for both ALLOW and the under-age action.
    assert any(
        line.strip().startswith("DEFAULT/adult_content: required_confidence 0.95 is the bar for ALLOW")
        and "BLOCK (P(age < 18) >= 0.95" in line
        for line in result.stdout.splitlines()
    )


def test_missing_file_is_one_line_with_exit_code_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    one_error_line(agegate("policy", "check", str(missing)), EXIT_USAGE, str(missing))
    one_error_line(agegate("config", "show", AGEGATE_CONFIG=str(missing)), EXIT_USAGE, str(missing), "does not exist")
    one_error_line(
        agegate("worker", AGEGATE_MODEL=str(tmp_path), KAFKA_SSL_CAFILE=str(missing)),
        EXIT_USAGE,
        "KAFKA_SSL_CAFILE",
        str(missing),
    )


def test_kafka_unreachable_is_one_line_with_exit_code_3() -> None:
    one_error_line(agegate("topics", "describe"), EXIT_UNAVAILABLE, "agegate topics:", CLOSED, "did not answer")
    one_error_line(agegate("dead-letters", "list"), EXIT_UNAVAILABLE, "agegate dead-letters:", "Kafka")


def test_redis_unreachable_is_one_line_with_exit_code_3(tmp_path: Path) -> None:
    result = agegate(
        "replay",
        "--from",
        "earliest",
        "--out",
        f"file:{tmp_path / 'r.jsonl'}",
        REDIS_URL="redis://user:hunter2@127.0.0.1:1/0",
    )
    line = one_error_line(result, EXIT_UNAVAILABLE, "agegate replay:", "Redis", "did not answer")
    assert "hunter2" not in line


def test_debug_flag_adds_the_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    for result in (
        agegate("--debug", "policy", "check", missing),
        agegate("policy", "check", missing, AGEGATE_DEBUG="1"),
    ):
        assert result.returncode == EXIT_USAGE
        assert "Traceback" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("agegate policy:")


def test_in_json_mode_the_error_line_is_a_json_object(tmp_path: Path) -> None:
    result = agegate("policy", "check", str(tmp_path / "nope.toml"), AGEGATE_LOG_FORMAT="json")
    assert result.returncode == EXIT_USAGE
    (line,) = result.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "error"
    assert record["exit_code"] == EXIT_USAGE
    assert record["event"].startswith("agegate policy:")


# --- settings people type -------------------------------------------------------------------------


def test_misspelled_variable_is_warned_about_with_the_nearest_name() -> None:
    result = agegate("config", "show", AGEGATE_LOG_LEVL="DEBUG")
    assert result.returncode == 0
    assert "AGEGATE_LOG_LEVL" in result.stderr
    assert "did you mean AGEGATE_LOG_LEVEL?" in result.stderr


def test_enums_are_case_insensitive() -> None:
    result = agegate("config", "show", AGEGATE_LOG_LEVEL="debug", AGEGATE_DEVICE="CPU", AGEGATE_LOG_FORMAT="Console")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["log_level"], shown["inference_device"], shown["log_format"]) == ("DEBUG", "cpu", "console")
