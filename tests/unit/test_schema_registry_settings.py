"""The Schema Registry settings: one usable client configuration, every mistake named, no secret shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.config import Settings, load_settings
from stream.errors import ConfigError

SECRET = "r3g-S3cret"
URL = "https://registry.internal/apis/ccompat/v7"


def problems(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=env)
    return "\n".join(caught.value.problems)


def test_defaults_use_the_packaged_manifest_and_register_nothing() -> None:
    settings = load_settings(environ={})
    assert settings.schema_registry_url == ""
    assert settings.schema_auto_register is False
    assert settings.schema_subject_strategy == "topic_name"
    assert settings.schema_compatibility == ""


def test_a_complete_registry_configuration(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_settings(
        environ={
            "SCHEMA_REGISTRY_URL": URL,
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": f"agegate:{SECRET}",
            "SCHEMA_REGISTRY_SSL_CAFILE": str(ca),
            "AGEGATE_SCHEMA_AUTO_REGISTER": "true",
            "AGEGATE_SCHEMA_SUBJECT_STRATEGY": "record_name",
            "AGEGATE_SCHEMA_COMPATIBILITY": "BACKWARD",
        }
    )
    conf = settings.schema_registry_client_config()
    assert conf["url"] == URL
    assert conf["basic.auth.user.info"] == f"agegate:{SECRET}"
    assert conf["ssl.ca.location"] == str(ca)
    assert settings.schema_auto_register is True
    assert settings.schema_subject_strategy == "record_name"
    assert settings.schema_compatibility == "BACKWARD"
    assert SECRET not in json.dumps(settings.redacted())  # `agegate config show` and logs


def test_the_client_configuration_is_accepted_by_confluent_kafka(tmp_path: Path) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    settings = load_settings(environ={"SCHEMA_REGISTRY_URL": URL, "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "u:p"})
    SchemaRegistryClient(settings.schema_registry_client_config())  # raises on an unknown or malformed key


def test_without_a_url_no_auth_or_tls_is_configured() -> None:
    conf = Settings().schema_registry_client_config()
    assert "basic.auth.user.info" not in conf
    assert "ssl.ca.location" not in conf


@pytest.mark.parametrize("url", ["registry.internal:8081", "ftp://registry.internal/", "http://"])
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    assert "schema_registry_url: " in problems({"SCHEMA_REGISTRY_URL": url})


def test_a_bad_url_is_named_without_its_secret() -> None:
    text = problems({"SCHEMA_REGISTRY_URL": f"ftp://user:{SECRET}@registry.internal/"})
    assert "is not an http:// or https:// URL" in text
    assert SECRET not in text


def test_several_urls_are_each_checked() -> None:
    assert load_settings(environ={"SCHEMA_REGISTRY_URL": f"{URL}, https://b.internal/"}).schema_registry_url
    assert "'b.internal'" in problems({"SCHEMA_REGISTRY_URL": f"{URL},b.internal"})


def test_user_info_needs_a_colon_and_one_place() -> None:
    assert "expected `user:secret`" in problems(
        {"SCHEMA_REGISTRY_URL": URL, "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "just-a-token"}
    )
    text = problems(
        {
            "SCHEMA_REGISTRY_URL": f"https://u:{SECRET}@registry.internal/",
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": f"u:{SECRET}",
        }
    )
    assert "give it in one place" in text
    assert SECRET not in text


def test_ca_file_must_exist_and_go_with_https(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    text = problems({"SCHEMA_REGISTRY_URL": URL, "SCHEMA_REGISTRY_SSL_CAFILE": str(missing)})
    assert f"{missing} does not exist" in text
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert "is not https://" in problems(
        {"SCHEMA_REGISTRY_URL": "http://registry.internal/", "SCHEMA_REGISTRY_SSL_CAFILE": str(ca)}
    )


def test_registry_settings_without_a_registry_are_a_mistake_not_ignored(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    text = problems(
        {
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "u:p",
            "SCHEMA_REGISTRY_SSL_CAFILE": str(ca),
            "AGEGATE_SCHEMA_COMPATIBILITY": "FULL",
        }
    )
    for name in ("schema_registry_basic_auth", "schema_registry_ssl_cafile", "schema_compatibility"):
        assert f"{name}: set, but schema_registry_url is empty" in text


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("AGEGATE_SCHEMA_SUBJECT_STRATEGY", "topic", "schema_subject_strategy: 'topic' is not one of"),
        ("AGEGATE_SCHEMA_COMPATIBILITY", "SIDEWAYS", "schema_compatibility: 'SIDEWAYS' is not one of"),
        ("AGEGATE_SCHEMA_AUTO_REGISTER", "maybe", "schema_auto_register: expected a boolean"),
    ],
)
def test_enumerations_and_switches_are_validated(env: str, value: str, expected: str) -> None:
    assert expected in problems({"SCHEMA_REGISTRY_URL": URL, env: value})
