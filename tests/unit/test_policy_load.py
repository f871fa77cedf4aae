"""Loading and validating policy files."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.core.policy import Action, PolicyError, load_policy


def test_default_policy_covers_required_surfaces_and_differing_jurisdictions() -> None:
    p = load_policy()
    assert p.version
    default = p.jurisdictions[p.default_jurisdiction].surfaces
    assert default["account_creation"].min_age == 13
    assert default["messaging_unknown_adults"].min_age == 16
    assert default["adult_content"].min_age == 18
    assert default["adult_content"].under_age_action is Action.BLOCK
    assert p.jurisdictions["EU"].surfaces["account_creation"].min_age == 16
    assert p.jurisdictions["GB"].surfaces["messaging_unknown_adults"].min_age == 18
    # Surfaces a jurisdiction does not define are inherited from the default one.
    assert p.jurisdictions["EU"].surfaces["adult_content"] == default["adult_content"]


def test_every_error_is_reported_with_its_location(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(
        """
default_jurisdiction = "NOWHERE"
colour = "blue"

[settings]
hysteresis_margin = 0.45
min_observations = 0

[jurisdictions.A.surfaces.chat]
min_age = "sixteen"
buffer_years = -1
required_confidence = 0.9
under_age_action = "ALLOW"

[jurisdictions.A.surfaces.video]
min_age = 13
"""
    )
    with pytest.raises(PolicyError) as info:
        load_policy(f)
    problems = info.value.problems
    expected = [
        "version: required",
        "colour: unknown key",
        "settings.min_observations",
        "jurisdictions.A.surfaces.chat.min_age: expected a number",
        "jurisdictions.A.surfaces.chat.buffer_years: must be in",
        "jurisdictions.A.surfaces.chat.required_confidence: minus settings.hysteresis_margin",
        "jurisdictions.A.surfaces.chat.under_age_action: must be RESTRICT or BLOCK",
        "jurisdictions.A.surfaces.video.buffer_years: required",
        "jurisdictions.A.surfaces.video.required_confidence: required",
        "default_jurisdiction: must name a jurisdiction",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert all(p.startswith(str(f)) for p in problems)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text('version = "x"\n[jurisdictions\n')
    with pytest.raises(PolicyError, match=r"line 2"):
        load_policy(f)


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.toml")


def test_default_policy_lists_every_jurisdiction_the_load_generator_uses() -> None:
    """Generated events are judged by their own rules, never by the unknown-jurisdiction fallback."""
    from stream.adapters.codec import AvroCodec
    from stream.core.policy import PolicyEvent, decide
    from stream.tools.loadgen import JURISDICTIONS, synthetic_stream

    p = load_policy()
    assert set(JURISDICTIONS) <= set(p.jurisdictions)
    assert p.jurisdictions["US"].surfaces == p.jurisdictions[p.default_jurisdiction].surfaces
    for jurisdiction in JURISDICTIONS:
        d = decide(None, PolicyEvent(jurisdiction, "profile_photo", 0.0), p, now=0.0, half_life_s=1.0)
        assert "unknown_jurisdiction_fallback" not in d.reason_codes, jurisdiction
    codec = AvroCodec()
    stream = synthetic_stream(80, seed=3, frames_per_event=0)
    generated = {codec.decode(ev.value).record["jurisdiction"] for ev in stream}
    assert generated == set(JURISDICTIONS)  # what it draws from is what it exports
