"""What a replay's state file pins, and how a difference is reported (stream/runners/replay_pins.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream.config import load_settings
from stream.runners.replay_pins import differences, output_settings


def pins(tmp_path: Path, policy_text: str = "p", **overrides: Any) -> dict[str, Any]:
    model, policy = tmp_path / "m.safetensors", tmp_path / f"policy-{policy_text}.toml"
    model.write_bytes(b"weights")
    policy.write_text(policy_text)
    return output_settings(
        load_settings(environ={}, **overrides),
        model_file=model,
        policy_file=policy,
        model_version="m@1",
        policy_version="v1",
        device="cpu",
        out="file:x.jsonl",
    )


def test_output_changing_settings_are_pinned_and_reported(tmp_path: Path) -> None:
    base = pins(tmp_path)
    assert differences(base, pins(tmp_path)) == []
    assert len(str(base["model_sha256"])) == 64
    assert differences(base, pins(tmp_path, batch_max_frames=16)) == ["batch_frames: 64 -> 16"]
    edited = pins(tmp_path, policy_text="edited, same version")
    assert differences(base, edited) == [f"policy_sha256: {base['policy_sha256']!r} -> {edited['policy_sha256']!r}"]


def test_pace_settings_are_not_pinned(tmp_path: Path) -> None:
    """Scoring does not depend on them, so a resume may change them (tests/integration/test_rollout.py)."""
    base = pins(tmp_path)
    assert differences(base, pins(tmp_path, batch_max_wait_ms=1.0, queue_max_events=7)) == []
