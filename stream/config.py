"""Every setting of the worker and tools, in one validated place.

Each setting has a type, an environment variable, a default and a doc line; the reference table in
docs/configuration.md is generated from this module (`agegate config reference`), so it cannot
drift. Values come from, in increasing precedence: defaults, a TOML file named by `AGEGATE_CONFIG`
(keys are the field names), and environment variables. All problems are reported at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints
from urllib.parse import urlsplit, urlunsplit

from stream.errors import ConfigError


def setting(default: Any, env: str, doc: str, *, secret: bool = False, choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc, "secret": secret, "choices": choices})


@dataclass(frozen=True, slots=True)
class Settings:
    # --- Kafka -----------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = setting(
        "127.0.0.1:39092", "KAFKA_BOOTSTRAP_SERVERS", "Kafka bootstrap servers, comma separated."
    )
    kafka_security_protocol: str = setting(
        "PLAINTEXT",
        "KAFKA_SECURITY_PROTOCOL",
        "Kafka security protocol.",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    kafka_sasl_mechanism: str = setting(
        "",
        "KAFKA_SASL_MECHANISM",
        "SASL mechanism when SASL is used (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).",
        choices=("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    kafka_sasl_username: str = setting("", "KAFKA_SASL_USERNAME", "SASL user name.")
    kafka_sasl_password: str = setting("", "KAFKA_SASL_PASSWORD", "SASL password.", secret=True)
    kafka_ssl_cafile: str = setting("", "KAFKA_SSL_CAFILE", "CA bundle for TLS to the brokers (empty: system CAs).")
    schema_registry_url: str = setting(
        "",
        "SCHEMA_REGISTRY_URL",
        "Confluent-compatible Schema Registry URL(s), comma separated (the local Apicurio: "
        "http://127.0.0.1:38081/apis/ccompat/v7); empty uses the packaged manifest in schemas/.",
        secret=True,
    )
    schema_registry_basic_auth: str = setting(
        "",
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        "Basic auth for the registry as `user:secret` (never logged); or put the user info in the URL, not both.",
        secret=True,
    )
    schema_registry_ssl_cafile: str = setting(
        "", "SCHEMA_REGISTRY_SSL_CAFILE", "CA bundle for TLS to the registry (empty: the system's and certifi's CAs)."
    )
    schema_auto_register: bool = setting(
        False,
        "AGEGATE_SCHEMA_AUTO_REGISTER",
        "Producers register the packaged schema of a subject when the registry lacks it. Off: a deployment only "
        "looks schemas up (register them at release with `agegate schemas register`); on for local registries.",
    )
    schema_subject_strategy: str = setting(
        "topic_name",
        "AGEGATE_SCHEMA_SUBJECT_STRATEGY",
        "Registry subject of a value schema: topic_name is `<topic>-value` (Confluent's default), record_name is "
        "the record's full name.",
        choices=("topic_name", "record_name"),
    )
    schema_compatibility: str = setting(
        "",
        "AGEGATE_SCHEMA_COMPATIBILITY",
        "Compatibility level set on a subject when agegate registers a schema; empty leaves the registry's own.",
        choices=(
            "",
            "BACKWARD",
            "BACKWARD_TRANSITIVE",
            "FORWARD",
            "FORWARD_TRANSITIVE",
            "FULL",
            "FULL_TRANSITIVE",
            "NONE",
        ),
    )
    topic_prefix: str = setting("agegate.", "AGEGATE_TOPIC_PREFIX", "Prefix of every topic name (per environment).")
    topic_replication_factor: int = setting(
        1, "AGEGATE_TOPIC_REPLICATION", "Replication factor `agegate topics create` uses (3 in production)."
    )
    consumer_group: str = setting("agegate-worker", "AGEGATE_CONSUMER_GROUP", "Consumer group of the worker.")
    delivery: str = setting(
        "at_least_once",
        "AGEGATE_DELIVERY",
        "Delivery guarantee of the worker. Only at-least-once (idempotent belief updates, decision idempotency "
        "keys) is offered: faust's exactly_once has open duplicate bugs (faust issues 323, 517).",
        choices=("at_least_once",),
    )
    # --- Redis -----------------------------------------------------------------------------------
    redis_url: str = setting("redis://127.0.0.1:36379/0", "REDIS_URL", "Redis holding the age beliefs.", secret=True)
    redis_cluster: bool = setting(
        False,
        "AGEGATE_REDIS_CLUSTER",
        "REDIS_URL names a node of a Redis Cluster: use the cluster client (routes each user's keys to its slot).",
    )
    redis_key_prefix: str = setting(
        "agegate", "AGEGATE_REDIS_PREFIX", "Key namespace; replays use their own. No `{` or `}` (hash tags)."
    )
    belief_half_life_days: float = setting(
        365.0, "AGEGATE_BELIEF_HALF_LIFE_DAYS", "Half-life of the precision of estimated evidence, in days."
    )
    belief_ttl_days: float = setting(
        400.0, "AGEGATE_BELIEF_TTL_DAYS", "A belief not updated for this long is deleted (data minimisation)."
    )
    # --- Model and inference ---------------------------------------------------------------------
    model_checkpoint: str = setting(
        "", "AGEGATE_MODEL", "Checkpoint directory or .safetensors file of the scoring model."
    )
    shadow_model_checkpoint: str = setting(
        "", "AGEGATE_SHADOW_MODEL", "Optional shadow model scored on the same batches, never acted on."
    )
    inference_device: str = setting(
        "auto", "AGEGATE_DEVICE", "Where inference runs: auto picks CUDA when present.", choices=("auto", "cpu", "cuda")
    )
    inference_threads: int = setting(0, "AGEGATE_INFERENCE_THREADS", "CPU threads for inference (0: all cores).")
    decode_processes: int = setting(
        1,
        "AGEGATE_DECODE_PROCESSES",
        "Processes decoding frames beside the event loop; a frame that crashes or hangs one fails alone. 0 decodes "
        "in the inference thread, where such a frame stops the worker. On a GPU, decode is the limit: raise it.",
    )
    batch_max_frames: int = setting(
        64,
        "AGEGATE_BATCH_MAX_FRAMES",
        "A forward pass holds at most this many frames; the consumer takes at most this many events at once...",
    )
    batch_max_wait_ms: float = setting(
        25.0, "AGEGATE_BATCH_MAX_WAIT_MS", "...or what arrived within this long after the first."
    )
    inference_max_wait_ms: float = setting(
        0.0,
        "AGEGATE_INFERENCE_MAX_WAIT_MS",
        "Once the model is free, how long a forward pass may still wait for more frames (0: score what is "
        "pending at once; the consumer's batch already waited).",
    )
    queue_max_events: int = setting(
        2048, "AGEGATE_QUEUE_MAX_EVENTS", "Events in flight before consumption pauses (backpressure)..."
    )
    queue_max_bytes: int = setting(
        256 * 1024 * 1024,
        "AGEGATE_QUEUE_MAX_BYTES",
        "...or this many bytes of their Kafka values (their frames), whichever comes first.",
    )
    fetch_min_bytes: int = setting(
        65536, "AGEGATE_FETCH_MIN_BYTES", "The worker's Kafka fetch waits for this many bytes..."
    )
    fetch_max_wait_ms: int = setting(25, "AGEGATE_FETCH_MAX_WAIT_MS", "...or this long, whichever comes first.")
    # --- Frames ----------------------------------------------------------------------------------
    frame_max_bytes: int = setting(8_000_000, "AGEGATE_FRAME_MAX_BYTES", "Largest encoded frame accepted.")
    frame_max_pixels: int = setting(
        25_000_000, "AGEGATE_FRAME_MAX_PIXELS", "Largest decoded frame (width x height); larger is a bomb."
    )
    frame_uri_roots: str = setting(
        "",
        "AGEGATE_FRAME_URI_ROOTS",
        "Stores frames may be fetched from, comma separated: file:///dir/ or https://host/prefix/. Empty: none.",
    )
    frame_fetch_timeout_s: float = setting(5.0, "AGEGATE_FRAME_FETCH_TIMEOUT_S", "Time limit of one frame fetch.")
    max_frames_per_event: int = setting(
        16,
        "AGEGATE_MAX_FRAMES_PER_EVENT",
        "Frames of one event that are scored; the rest are ignored and the decision carries `frames_over_limit`.",
    )
    # --- Policy and safety -----------------------------------------------------------------------
    policy_file: str = setting("", "AGEGATE_POLICY", "Policy TOML file; empty uses the packaged default policy.")
    invalid_share_limit: float = setting(
        0.5,
        "AGEGATE_INVALID_SHARE_LIMIT",
        "When more than this share of recent events is invalid (a deployment mistake), the worker pauses its input "
        "until `POST /resume` or a restart (docs/operations.md).",
    )
    invalid_share_window: int = setting(
        200, "AGEGATE_INVALID_SHARE_WINDOW", "How many recent events the invalid share is computed over."
    )
    # --- Model improvement: consented retention and erasure -------------------------------------
    retained_frames_retention_days: float = setting(
        90.0,
        "AGEGATE_RETAINED_FRAMES_RETENTION_DAYS",
        "How long frames of consenting users stay on the retained-frames topic (its retention.ms; compact+delete).",
    )
    # --- Model promotion (agegate model promote) --------------------------------------------------
    promote_shadow_window_hours: float = setting(
        24.0,
        "AGEGATE_PROMOTE_SHADOW_WINDOW_HOURS",
        "Promotion reads the candidate's shadow records of this many most recent hours.",
    )
    promote_shadow_min_events: int = setting(
        1000,
        "AGEGATE_PROMOTE_SHADOW_MIN_EVENTS",
        "Promotion is refused unless the shadow scored at least this many events in the window.",
    )
    promote_shadow_max_action_change_rate: float = setting(
        0.05,
        "AGEGATE_PROMOTE_SHADOW_MAX_ACTION_CHANGE_RATE",
        "Largest share of shadowed events whose action the candidate would have changed.",
    )
    promote_shadow_max_new_allow_rate: float = setting(
        0.01,
        "AGEGATE_PROMOTE_SHADOW_MAX_NEW_ALLOW_RATE",
        "Largest share of shadowed events the candidate would ALLOW where the live model did not.",
    )
    promote_shadow_max_mean_abs_diff_years: float = setting(
        3.0,
        "AGEGATE_PROMOTE_SHADOW_MAX_MEAN_ABS_DIFF_YEARS",
        "Largest mean absolute difference between the candidate's and the live model's frame estimates.",
    )
    # --- Process ---------------------------------------------------------------------------------
    web_port: int = setting(6066, "AGEGATE_WEB_PORT", "Port of /metrics, /healthz and /readyz.")
    event_loop: str = setting(
        "uvloop",
        "AGEGATE_EVENT_LOOP",
        "The asyncio event loop of the worker and the replay tool: uvloop (libuv, less CPU per event) or "
        "asyncio (the standard one).",
        choices=("uvloop", "asyncio"),
    )
    switch_interval_ms: float = setting(
        1.0,
        "AGEGATE_SWITCH_INTERVAL_MS",
        "How long the event loop may hold the interpreter lock while the decode and inference threads wait "
        "for it, in the worker and the replay tool (Python's sys.setswitchinterval; its own default is 5).",
    )
    shutdown_grace_s: float = setting(
        25.0, "AGEGATE_SHUTDOWN_GRACE_S", "SIGTERM: time to finish the in-flight batch, flush and commit."
    )
    log_format: str = setting(
        "auto",
        "AGEGATE_LOG_FORMAT",
        "auto: console on a terminal, JSON otherwise.",
        choices=("auto", "json", "console"),
    )
    log_level: str = setting("INFO", "AGEGATE_LOG_LEVEL", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every confluent-kafka client we create; its log lines go
        through our logging (one format, JSON in deployments), not straight to stderr."""
        from stream.log import LIBRDKAFKA_LOGGER

        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
            "logger": LIBRDKAFKA_LOGGER,
        }
        if self.kafka_sasl_mechanism:
            conf |= {
                "sasl.mechanism": self.kafka_sasl_mechanism,
                "sasl.username": self.kafka_sasl_username,
                "sasl.password": self.kafka_sasl_password,
            }
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = self.kafka_ssl_cafile
        return conf

    def schema_registry_client_config(self) -> dict[str, str | int | float]:
        """confluent-kafka SchemaRegistryClient settings (only meaningful with a registry URL).

        Requests are short and retried little: a lookup runs inline on the worker's event loop, so
        an unreachable registry must fail fast (the caller then treats it as a dependency outage).
        """
        conf: dict[str, str | int | float] = {
            "url": self.schema_registry_url,
            "timeout": 5,
            "max.retries": 2,
            "retries.wait.ms": 200,
            "retries.max.wait.ms": 1000,
        }
        if self.schema_registry_basic_auth:
            conf["basic.auth.user.info"] = self.schema_registry_basic_auth
        if self.schema_registry_ssl_cafile:
            conf["ssl.ca.location"] = self.schema_registry_ssl_cafile
        return conf

    def redacted(self) -> dict[str, Any]:
        """The settings with secrets hidden, safe to print or log."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value:
                value = _redact_url(value) if "://" in str(value) else "***"
            out[f.name] = value
        return out


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _convert(name: str, raw: Any, typ: Any) -> Any:
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if typ is int:
        if isinstance(raw, bool):
            raise ValueError(f"{name}: expected an integer, got {raw!r}")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
    if typ is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {raw!r}") from None
    if get_args(typ) and typ.__origin__ is Literal:  # pragma: no cover - not used yet
        return str(raw)
    return str(raw)


_POSITIVE = (
    "topic_replication_factor",
    "batch_max_frames",
    "queue_max_events",
    "queue_max_bytes",
    "fetch_min_bytes",
    "fetch_max_wait_ms",
    "frame_max_bytes",
    "frame_max_pixels",
    "max_frames_per_event",
    "web_port",
    "invalid_share_window",
    "batch_max_wait_ms",
    "belief_half_life_days",
    "belief_ttl_days",
    "frame_fetch_timeout_s",
    "shutdown_grace_s",
    "retained_frames_retention_days",
    "promote_shadow_window_hours",
    "switch_interval_ms",
)
_NON_NEGATIVE = (
    "promote_shadow_min_events",
    "promote_shadow_max_mean_abs_diff_years",
    "inference_threads",
    "decode_processes",
    "inference_max_wait_ms",
)
_SHARES = ("promote_shadow_max_action_change_rate", "promote_shadow_max_new_allow_rate")


def _validate(s: Settings) -> list[str]:
    return _range_problems(s) + _connection_problems(s) + _registry_problems(s)


def _range_problems(s: Settings) -> list[str]:
    problems = [f"{n}: must be > 0, got {getattr(s, n)}" for n in _POSITIVE if getattr(s, n) <= 0]
    problems += [f"{n}: must be >= 0, got {getattr(s, n)}" for n in _NON_NEGATIVE if getattr(s, n) < 0]
    problems += [f"{n}: must be in [0, 1], got {getattr(s, n)}" for n in _SHARES if not 0 <= getattr(s, n) <= 1]
    if not 1 <= s.web_port <= 65535:
        problems.append(f"web_port: must be a TCP port (1..65535), got {s.web_port}")
    if not 0 < s.invalid_share_limit <= 1:
        problems.append(f"invalid_share_limit: must be in (0, 1], got {s.invalid_share_limit}")
    return problems


def _connection_problems(s: Settings) -> list[str]:
    """Kafka security, the Redis URL and key prefix, frame store roots: what a client would reject later."""
    problems = []
    if s.kafka_security_protocol.startswith("SASL") and not s.kafka_sasl_mechanism:
        problems.append("kafka_sasl_mechanism: required when kafka_security_protocol uses SASL")
    if not urlsplit(s.redis_url).scheme.startswith(("redis", "rediss", "unix")):
        problems.append(
            f"redis_url: expected redis://, rediss:// or unix://, got scheme {urlsplit(s.redis_url).scheme!r}"
        )
    if "{" in s.redis_key_prefix or "}" in s.redis_key_prefix:
        problems.append("redis_key_prefix: must not contain '{' or '}' (the user's hash tag decides the cluster slot)")
    if s.redis_cluster and urlsplit(s.redis_url).path not in {"", "/", "/0"}:
        problems.append("redis_url: a Redis Cluster has only database 0")
    for root in filter(None, (r.strip() for r in s.frame_uri_roots.split(","))):
        scheme = urlsplit(root).scheme
        if scheme not in {"file", "http", "https"} or not root.endswith("/"):
            problems.append(f"frame_uri_roots: {root!r} must be file://, http:// or https:// and end with '/'")
    return problems


def _registry_problems(s: Settings) -> list[str]:
    """The registry settings make one usable client configuration (no secret in any message)."""
    problems = []
    urls = [u.strip() for u in s.schema_registry_url.split(",") if u.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            problems.append(f"schema_registry_url: {_redact_url(url)!r} is not an http:// or https:// URL")
    in_url = any(urlsplit(u).username or urlsplit(u).password for u in urls)
    if s.schema_registry_basic_auth:
        if ":" not in s.schema_registry_basic_auth:
            problems.append("schema_registry_basic_auth: expected `user:secret`")
        if in_url:
            problems.append("schema_registry_basic_auth: the URL carries user info too; give it in one place")
    if s.schema_registry_ssl_cafile:
        if not Path(s.schema_registry_ssl_cafile).exists():
            problems.append(f"schema_registry_ssl_cafile: {s.schema_registry_ssl_cafile} does not exist")
        if urls and not all(u.startswith("https://") for u in urls):
            problems.append("schema_registry_ssl_cafile: set, but schema_registry_url is not https://")
    if not urls:
        unused = [n for n in ("schema_registry_basic_auth", "schema_registry_ssl_cafile") if getattr(s, n)]
        unused += ["schema_compatibility"] if s.schema_compatibility else []
        problems += [f"{n}: set, but schema_registry_url is empty (the packaged manifest is used)" for n in unused]
    return problems


# AGEGATE_* variables read outside Settings (tools, tests, deploy/local, bench): not misspellings.
OTHER_ENVIRONMENT = frozenset(
    {
        "AGEGATE_CONFIG",
        "AGEGATE_DEBUG",
        "AGEGATE_FAUST_DATADIR",
        "AGEGATE_HOME",
        "AGEGATE_CACHE_DIR",
        "AGEGATE_STATE_DIR",
        "AGEGATE_TOOLS_BIN",
        "AGEGATE_KUSTOMIZE",
        "AGEGATE_TEST_MODEL_CACHE",
        "AGEGATE_BENCH_QUICK",
        "AGEGATE_KAFKA_PORT",
        "AGEGATE_KAFKA_CONTROLLER_PORT",
        "AGEGATE_KAFKA_VERSION",
        "AGEGATE_KAFKA_HEAP",
        "AGEGATE_KAFKA_START_TIMEOUT",
        "AGEGATE_REDIS_PORT",
        "AGEGATE_REDIS_CLUSTER_PORT",
        "AGEGATE_REDIS_CLUSTER_BUS_PORT",
        "AGEGATE_REGISTRY_PORT",
        "AGEGATE_REGISTRY_HEAP",
        "AGEGATE_REGISTRY_START_TIMEOUT",
        "AGEGATE_APICURIO_VERSION",
    }
)


def known_environment() -> frozenset[str]:
    return frozenset(f.metadata["env"] for f in dataclasses.fields(Settings)) | OTHER_ENVIRONMENT


def unknown_environment(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """(name, nearest known name or None) for every `AGEGATE_*` variable nothing reads."""
    known = known_environment()
    out = []
    for name in sorted(environ):
        if name.startswith("AGEGATE_") and name not in known:
            nearest = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            out.append((name, nearest[0] if nearest else None))
    return out


def _read_config_file(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError([f"AGEGATE_CONFIG: file {path} does not exist"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None


def _checked_value(f: dataclasses.Field[Any], raw: Any, hint: Any, source: str) -> Any:
    """`raw` converted to the setting's type and matched against its choices; ValueError says why."""
    try:
        value = _convert(f.name, raw, hint)
    except ValueError as exc:
        raise ValueError(f"{exc} (from {source})") from None
    choices = f.metadata["choices"]
    if choices:
        # People type `debug`, `json`, `CPU`: match case-insensitively, keep the canonical spelling.
        value = next((c for c in choices if str(value).strip().lower() == c.lower()), value)
        if value not in choices:
            raise ValueError(f"{f.name}: {value!r} is not one of {', '.join(map(repr, choices))} (from {source})")
    return value


def warn_unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warn about each `AGEGATE_*` variable no setting or tool reads, with the nearest known name:
    a misspelled variable otherwise passes silently and its default applies."""
    from stream.log import get_logger

    warned = []
    for name, nearest in unknown_environment(os.environ if environ is None else environ):
        hint = f"; did you mean {nearest}?" if nearest else ""
        get_logger("agegate.config").warning(f"unknown environment variable {name}{hint}", variable=name)
        warned.append(name)
    return warned


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: str | Path | None = None, **overrides: Any
) -> Settings:
    """Resolve settings from defaults, an optional TOML file, the environment and explicit overrides."""
    env = os.environ if environ is None else environ
    path = config_file if config_file is not None else env.get("AGEGATE_CONFIG") or None
    from_file = _read_config_file(path) if path else {}
    known = {f.name: f for f in dataclasses.fields(Settings)}
    problems = [f"{path}: unknown setting {key!r}" for key in from_file if key not in known]
    problems += [f"unknown setting {key!r} (from argument)" for key in overrides if key not in known]
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for name, f in known.items():
        env_name = f.metadata["env"]
        if name in overrides:
            source, raw = "argument", overrides[name]
        elif env_name in env:
            source, raw = env_name, env[env_name]
        elif name in from_file:
            source, raw = f"{path}:{name}", from_file[name]
        else:
            continue
        try:
            values[name] = _checked_value(f, raw, hints[name], source)
        except ValueError as exc:
            problems.append(str(exc))
    # Range checks run on the values that did convert, so every problem is reported in one go.
    settings = Settings(**values)
    problems += _validate(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def reference_table() -> str:
    """Markdown table of every setting, generated from the dataclass (docs/configuration.md)."""
    rows = ["| setting | environment variable | default | description |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default != "" else "(empty)"
        doc = f.metadata["doc"]
        if f.metadata["choices"]:
            doc += " One of: " + ", ".join(f"`{c}`" for c in f.metadata["choices"] if c) + "."
        rows.append(f"| `{f.name}` | `{f.metadata['env']}` | `{default}` | {doc} |")
    return "\n".join(rows) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("show", "reference"), help="show: resolved settings; reference: table")


def run(args: argparse.Namespace) -> int:
    if args.what == "reference":
        print(reference_table(), end="")
        return 0
    settings = load_settings()  # ConfigError: one line and exit code 2 (stream/cli.py)
    print(json.dumps(settings.redacted(), indent=2))
    return 0
