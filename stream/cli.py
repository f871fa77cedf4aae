# PYTHON_ARGCOMPLETE_OK  (argcomplete's marker: `register-python-argcomplete agegate` completes us)
"""The `agegate` console script.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
A module is imported only when its subcommand is chosen (to run it, to show its `--help`, or to
complete its options), so `agegate --help` and `agegate --version` import neither torch nor faust
nor confluent-kafka (tests/unit/test_cli.py holds us to that).

The mistakes people make - invalid configuration, a bad policy file, a file that does not exist, a
dependency that does not answer - end as one line on stderr and a documented exit code
(stream/errors.py, README "Exit codes"). The traceback is shown only with `--debug` or
AGEGATE_DEBUG=1: it helps whoever debugs agegate, not whoever runs it. An unexpected exception (a
bug) keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import MutableMapping, Sequence

from stream import __version__
from stream.errors import (
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    AgegateError,
    ConfigError,
    DependencyUnavailable,
)

# name -> (module, one-line help). The module provides add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "version": ("stream.tools.cmd_version", "print agegate's version and its main dependencies"),
    "infra": ("stream.tools.infra", "start, stop or show the local Kafka, Redis, Schema Registry (deploy/local)"),
    "topics": ("stream.adapters.topics", "create or describe the declared Kafka topics"),
    "demo": (
        "stream.tools.demo",
        "run the whole job locally: infra, topics, a worker and a synthetic stream; summarise its decisions",
    ),
    "train": ("model.train", "train an age model on a dataset manifest"),
    "synth": ("model.data.synthetic", "generate a synthetic face dataset with a manifest"),
    "datasets": ("stream.tools.datasets_cmd", "build the evaluation benchmark, or a training set from feedback"),
    "eval": ("stream.tools.evaluate", "evaluate models side by side; optional release gate"),
    "erase": ("stream.tools.erasure", "erase users: delete their beliefs and tombstone their retained frames"),
    "model": ("stream.tools.model_registry", "promote a model through the gate and shadow, roll back, or show status"),
    "worker": ("stream.runners.worker", "run the enforcement worker (faust)"),
    "produce": ("stream.tools.produce", "produce a synthetic event stream (load generator)"),
    "replay": ("stream.runners.replay", "replay a historical window through the pipeline"),
    "dead-letters": ("stream.tools.redrive", "list or redrive dead letters"),
    "config": ("stream.config", "show the resolved configuration or its reference table"),
    "schemas": ("stream.tools.schemas", "register or check the packaged Avro schemas in the Schema Registry"),
    "policy": ("stream.tools.policy_check", "validate a policy file and print its thresholds"),
    "completion": ("stream.tools.completion", "print the shell completion script (bash, zsh, fish)"),
}

# The commands that run the pipeline: their torch threads share the cores with an event loop.
PIPELINE_COMMANDS = frozenset({"worker", "replay"})


def let_idle_openmp_threads_sleep(environ: MutableMapping[str, str] = os.environ) -> None:
    """OMP_WAIT_POLICY=PASSIVE, unless the operator set it; call before torch is imported.

    libgomp (torch's CPU thread pool here) reads the variable once, when it loads. Unset, a pool
    thread spins about 3 ms after every parallel region before it sleeps: free on a machine that
    does nothing else, but in the worker it burns the cores the event loop, the decoder process and
    often the broker need between forward passes. Passive threads sleep at once: beside a thread
    running Python, the forward pass made 35% more passes and that thread 38% more progress
    (`python bench/omp_wait.py`); the backlogged worker with the CPU model, a median 5% more
    events/s (docs/architecture.md). `python bench/worker.py --omp-spin` puts both side by side.
    """
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


EXIT_CODES_HELP = """exit codes:
  0    success
  1    the command ran and its answer is no (differences found, a gate failed, ...)
  2    usage, configuration, policy or missing-file error (one line on stderr)
  3    a dependency (Kafka, Redis) unreachable, or another fatal runtime error
  4    worker: the shutdown grace ran out before in-flight work was committed
  130  interrupted

--debug (or AGEGATE_DEBUG=1) adds the traceback to an error."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default, unless its help already says it (no "(default: x) (default: x)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.default is False:
            return text
        if action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action) or text


def _debug_flag(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show the traceback of an error (or AGEGATE_DEBUG=1)"
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the module of the command `only` is imported (None: none, for `--help`)."""
    parser = argparse.ArgumentParser(
        prog="agegate",
        description="Streaming age-assurance enforcement: Kafka events -> age model -> belief -> policy decision.",
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"agegate {__version__}")
    _debug_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        # SUPPRESS: `agegate --debug worker` keeps the top-level flag's value.
        _debug_flag(p, default=argparse.SUPPRESS)
        if name == only:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def chosen_command(words: Sequence[str]) -> str | None:
    """The subcommand among the words, so that only its module is imported."""
    return next((w for w in words if w in COMMANDS), None)


def _one_line(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for the errors people cause and can fix; None for anything else (a bug)."""
    if isinstance(exc, ConfigError):  # PolicyError too: its subject is "policy"
        return f"invalid {exc.subject}: " + "; ".join(exc.problems), EXIT_USAGE
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
        name = exc.filename if exc.filename is not None else ""
        return (f"{exc.strerror}: {name}" if exc.strerror else str(exc)), EXIT_USAGE
    if isinstance(exc, DependencyUnavailable):
        return str(exc), EXIT_UNAVAILABLE
    if isinstance(exc, AgegateError):  # raised on purpose, with a message meant for the user
        return str(exc), EXIT_USAGE
    kafka = sys.modules.get("confluent_kafka")
    if kafka is not None and isinstance(exc, kafka.KafkaException):
        return f"Kafka: {exc}", EXIT_UNAVAILABLE
    redis_exceptions = sys.modules.get("redis.exceptions")
    if redis_exceptions is not None and isinstance(
        exc, redis_exceptions.ConnectionError | redis_exceptions.TimeoutError
    ):
        return f"Redis unreachable: {exc}", EXIT_UNAVAILABLE
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"connection failed: {exc}", EXIT_UNAVAILABLE
    return None


def _complete() -> None:
    """Shell completion (argcomplete): answers the shell and exits; only the typed command's module loads."""
    import argcomplete

    words = os.environ.get("COMP_LINE", "").split()[1:]
    argcomplete.autocomplete(build_parser(only=chosen_command(words)))


def main(argv: Sequence[str] | None = None) -> int:
    if "_ARGCOMPLETE" in os.environ:
        _complete()
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = chosen_command(args_list)
    debug = "--debug" in args_list or os.environ.get("AGEGATE_DEBUG", "").lower() in {"1", "true", "yes", "on"}
    if command in PIPELINE_COMMANDS:  # before the command's module imports torch
        let_idle_openmp_threads_sleep()
    try:
        parser = build_parser(only=command)
    except Exception as exc:  # the command's module failed to import (a missing optional dependency, ...)
        return _report(command or "agegate", exc, debug)
    args = parser.parse_args(args_list)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from stream.config import warn_unknown_environment
    from stream.log import configure_logging

    try:
        configure_logging()
        warn_unknown_environment()
        result: int = args._run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _report(args.command, exc, debug)
    return result


def _report(command: str, exc: BaseException, debug: bool) -> int:
    """One line for an error a person can fix; the traceback too for a bug, or with --debug."""
    from stream.log import error_line

    known = _one_line(exc)
    message, code = known or (f"unexpected error: {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE)
    error_line(f"agegate {command}: {message}", exc=exc if known is None or debug else None, exit_code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
