"""load_settings: defaults < file < environment < arguments; every problem at once; secrets hidden."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from stream import config
from stream.config import Settings, load_settings
from stream.errors import ConfigError

PASSWORD = "s3cr3t-Pa55"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agegate.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.consumer_group == "agegate-worker"
    assert settings.shutdown_grace_s == 25.0


def test_file_overrides_defaults_and_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'batch_max_frames = 10\nconsumer_group = "from-file"\nlog_level = "DEBUG"\n')
    env = {"AGEGATE_CONFIG": str(path), "AGEGATE_BATCH_MAX_FRAMES": "20"}
    settings = load_settings(environ=env)
    assert settings.batch_max_frames == 20  # environment wins over the file
    assert settings.consumer_group == "from-file"  # file wins over the default
    assert settings.log_level == "DEBUG"
    assert settings.queue_max_events == Settings().queue_max_events  # default kept
    # Explicit arguments win over both.
    assert load_settings(environ=env, batch_max_frames=30).batch_max_frames == 30


def test_explicit_config_file_argument(tmp_path: Path) -> None:
    path = write(tmp_path, "web_port = 7000\n")
    assert load_settings(environ={}, config_file=path).web_port == 7000


def test_types_are_converted_from_strings() -> None:
    settings = load_settings(environ={"AGEGATE_BATCH_MAX_WAIT_MS": "7.5", "AGEGATE_WEB_PORT": "7001"})
    assert settings.batch_max_wait_ms == 7.5
    assert settings.web_port == 7001
    assert isinstance(settings.web_port, int)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, 'no_such_setting = 1\nlog_level = "LOUD"\n')
    env = {
        "AGEGATE_CONFIG": str(path),
        "AGEGATE_BATCH_MAX_FRAMES": "many",  # not an integer
        "AGEGATE_QUEUE_MAX_EVENTS": "0",  # out of range
        "AGEGATE_INVALID_SHARE_LIMIT": "2",  # out of range
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",  # SASL without a mechanism
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=env)
    problems = caught.value.problems
    text = "\n".join(problems)
    for expected in (
        "unknown setting 'no_such_setting'",
        "log_level: 'LOUD' is not one of",
        "batch_max_frames: expected an integer",
        "queue_max_events: must be > 0",
        "invalid_share_limit: must be in (0, 1]",
        "kafka_sasl_mechanism: required",
    ):
        assert expected in text, f"missing {expected!r} in:\n{text}"
    assert len(problems) == 6
    # Each problem names where the bad value came from.
    assert "(from AGEGATE_BATCH_MAX_FRAMES)" in text
    assert f"(from {path}:log_level)" in text


def test_unknown_argument_is_a_problem_not_ignored() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'batch_max_frame'"):
        load_settings(environ={}, batch_max_frame=3)


def test_missing_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"AGEGATE_CONFIG": str(tmp_path / "nope.toml")})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(environ={"AGEGATE_CONFIG": str(write(tmp_path, "batch_max_frames = = 3"))})


def secret_settings() -> Settings:
    return load_settings(
        environ={
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "agegate",
            "KAFKA_SASL_PASSWORD": PASSWORD,
            "REDIS_URL": f"rediss://agegate:{PASSWORD}@redis.internal:6380/0",
            "SCHEMA_REGISTRY_URL": f"https://registry-user:{PASSWORD}@registry.internal/",
        }
    )


def test_secrets_are_redacted() -> None:
    settings = secret_settings()
    redacted = settings.redacted()
    assert PASSWORD not in json.dumps(redacted)
    assert redacted["kafka_sasl_password"] == "***"
    # URLs keep what is needed to debug a connection: scheme, host, port, path.
    assert redacted["redis_url"] == "rediss://***@redis.internal:6380/0"
    assert redacted["schema_registry_url"] == "https://***@registry.internal/"
    # Non-secret values are shown as they are.
    assert redacted["kafka_sasl_username"] == "agegate"
    # The real values are still there for the clients.
    assert settings.kafka_client_config()["sasl.password"] == PASSWORD


def test_every_secret_setting_is_redacted() -> None:
    secrets = [f for f in dataclasses.fields(Settings) if f.metadata["secret"]]
    assert {f.name for f in secrets} >= {"kafka_sasl_password", "redis_url", "schema_registry_url"}
    values: dict[str, Any] = {f.name: f"redis://u:{PASSWORD}@h/0" for f in secrets}
    settings = dataclasses.replace(Settings(), **values)
    assert PASSWORD not in json.dumps(settings.redacted())


def test_config_show_prints_no_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AGEGATE_CONFIG", raising=False)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("REDIS_URL", f"redis://:{PASSWORD}@redis:6379/0")
    assert config.run(argparse.Namespace(what="show")) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out
    assert json.loads(out)["kafka_sasl_password"] == "***"


def test_errors_do_not_echo_secret_urls() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"REDIS_URL": f"http://user:{PASSWORD}@redis:6379/0"})
    assert "redis_url" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_kafka_client_config_follows_security_settings() -> None:
    plain = load_settings(environ={}).kafka_client_config()
    assert plain["security.protocol"] == "PLAINTEXT"
    assert "sasl.mechanism" not in plain
    secure = load_settings(
        environ={
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "KAFKA_SSL_CAFILE": "/etc/ca.crt",
        }
    ).kafka_client_config()
    assert secure["sasl.mechanism"] == "SCRAM-SHA-256"
    assert secure["ssl.ca.location"] == "/etc/ca.crt"


def test_every_setting_is_documented_with_a_unique_environment_variable() -> None:
    fields = dataclasses.fields(Settings)
    envs = [f.metadata["env"] for f in fields]
    assert len(envs) == len(set(envs))
    for f in fields:
        assert f.metadata["doc"].strip(), f"{f.name} has no description"
        if f.metadata["choices"]:
            assert f.default in f.metadata["choices"], f"{f.name}: default is not one of its choices"
    # The defaults themselves pass validation.
    assert config._validate(Settings()) == []


def test_exactly_once_is_refused_not_silently_ignored() -> None:
    with pytest.raises(ConfigError, match="delivery: 'exactly_once' is not one of 'at_least_once'"):
        load_settings(environ={"AGEGATE_DELIVERY": "exactly_once"})
