"""`agegate model promote|rollback`: refused for a worse candidate, accepted for a better one, rollback
restores; the shadow's bounds refuse on their own; the history explains every pointer change."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model import train as train_mod
from model.data.manifest import ManifestRow, load_manifest, split_for_subject, write_manifest
from model.data.synthetic import generate_dataset
from stream.tools.model_pointer import Pointer, PointerError, deployed_stack
from stream.tools.model_registry import promote, rollback
from stream.tools.shadow_window import ShadowBounds, summarise, violations

BOUNDS = ShadowBounds(
    window_s=3600.0, min_events=10, max_action_change_rate=0.2, max_new_allow_rate=0.05, max_mean_abs_diff_years=4.0
)
NOW = 1_800_000_000.0


def _train(data: Path, out: Path, *extra: str) -> Path:
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--batch-size",
            "32",
            "--warmup-steps",
            "5",
            "--threads",
            "1",
            "--workers",
            "1",
            *extra,
        ]
    )
    assert train_mod.run(args) == 0
    return out / "best.safetensors"


def _as_feedback(manifest: Path, out: Path) -> Path:
    """Synthetic rows with hashed subject ids, as `datasets from-feedback` writes them (users, not seeds)."""
    m = load_manifest(manifest)
    rows = []
    for r in m.rows:
        subject = "u-" + hashlib.sha256(r.subject_id.encode()).hexdigest()[:16]
        split = split_for_subject(subject, val=0.15, test=0.3)
        rows.append(ManifestRow(str(m.resolve(r).resolve()), r.age, subject, split, r.attributes))
    return write_manifest(out, rows)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("promote")
    base = generate_dataset(root / "base", images=1200, seed=1, size=32)
    bench = generate_dataset(root / "bench", images=400, seed=3, size=32)
    feedback = _as_feedback(generate_dataset(root / "fb-src", images=600, seed=2, size=32), root / "feedback.csv")
    arch = ("--input-size", "32", "--width", "8", "--depth", "1")
    production = _train(base, root / "production", *arch, "--epochs", "8", "--version", "prod")
    better = _train(
        feedback,
        root / "better",
        "--init-from",
        str(production),
        "--mix",
        str(base),
        "--epochs",
        "4",
        "--lr",
        "1e-3",
        "--version",
        "better",
    )
    worse = _train(feedback, root / "worse", *arch, "--epochs", "1", "--lr", "0", "--version", "worse")
    return {"production": production, "better": better, "worse": worse, "bench": bench, "feedback": feedback}


def _shadow(
    version: str, *, events: int = 40, changed: int = 2, to_allow: int = 0, diff: float = 1.0
) -> Iterator[tuple[float, bytes]]:
    for i in range(events):
        live = "REQUIRE_VERIFICATION"
        shadow = ("ALLOW" if i < to_allow else "BLOCK") if i < changed else live
        body = {
            "live": {"action": live, "model_version": "age_regressor@prod"},
            "shadow": {"action": shadow, "model_version": version},
            "mean_abs_diff_years": diff,
        }
        yield NOW - 60.0 * (i + 1), json.dumps(body).encode()


def _pointer(tmp_path: Path, model: Path) -> Pointer:
    path = tmp_path / "model.env"
    path.write_text(f"# test\nAGEGATE_MODEL={model}\n")
    return Pointer(path)


def _promote(
    pointer: Pointer,
    candidate: Path,
    models: dict[str, Path],
    out: Path,
    shadow: Iterator[tuple[float, bytes]] | None = None,
) -> tuple[bool, dict[str, Any]]:
    version = f"age_regressor@{candidate.parent.name}"
    records = list(shadow if shadow is not None else _shadow(version))
    return promote(
        pointer,
        str(candidate),
        benchmark=str(models["bench"]),
        feedback=str(models["feedback"]),
        reason="test",
        who="tester",
        shadow_source=lambda v, w: (NOW - w, NOW, iter(records)),
        bounds=BOUNDS,
        out=out,
        bootstrap=200,
        threads=1,
        now=NOW,
        echo=lambda _: None,
    )


def test_a_worse_candidate_is_refused_and_the_pointer_stays(models: dict[str, Path], tmp_path: Path) -> None:
    pointer = _pointer(tmp_path, models["production"])
    accepted, entry = _promote(pointer, models["worse"], models, tmp_path / "eval")
    assert not accepted
    assert pointer.read() == str(models["production"])
    assert entry["action"] == "refused"
    gates = {g["dataset"]: g for g in entry["evidence"]["gates"]}
    assert not gates["benchmark"]["passed"]
    assert not gates["feedback"]["passed"]
    assert any("MAE may not rise" in v for v in gates["benchmark"]["violations"]), entry
    assert pointer.history() == [entry]  # the refusal is on record too
    assert deployed_stack(pointer.history()) == []


def test_a_better_candidate_is_promoted_and_rollback_restores(models: dict[str, Path], tmp_path: Path) -> None:
    pointer = _pointer(tmp_path, models["production"])
    accepted, entry = _promote(pointer, models["better"], models, tmp_path / "eval")
    assert accepted, entry["refused_because"]
    assert pointer.read() == str(models["better"])
    assert entry["by"] == "tester"
    assert entry["previous"] == str(models["production"])
    assert entry["model_version"] == "age_regressor@better"
    assert (tmp_path / "eval" / "feedback" / "metrics.json").is_file()

    back = rollback(pointer, reason="pages", who="oncall", now=NOW + 60)
    assert pointer.read() == str(models["production"])
    assert back["model_version"] == "age_regressor@prod"
    assert [e["action"] for e in pointer.history()] == ["promote", "rollback"]
    assert [e["revision"] for e in pointer.history()] == [1, 2]
    with pytest.raises(PointerError, match="no earlier promoted model"):
        rollback(pointer, reason="again", who="oncall")


def test_shadow_out_of_bounds_refuses_a_candidate_the_gates_pass(models: dict[str, Path], tmp_path: Path) -> None:
    pointer = _pointer(tmp_path, models["production"])
    risky = _shadow("age_regressor@better", events=40, changed=10, to_allow=6)
    accepted, entry = _promote(pointer, models["better"], models, tmp_path / "eval", shadow=risky)
    assert not accepted
    assert all(g["passed"] for g in entry["evidence"]["gates"])
    assert any("new-ALLOW rate" in r for r in entry["refused_because"])
    assert pointer.read() == str(models["production"])


def test_a_hand_edited_pointer_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    pointer = _pointer(tmp_path, models["production"])
    pointer.append({"revision": 1, "action": "promote", "model": "/models/a", "previous": "/models/z"})
    with pytest.raises(PointerError, match="edited by hand"):
        rollback(pointer, reason="x", who="y")


def test_shadow_summary_counts_only_the_candidate_in_the_window() -> None:
    records = [
        *_shadow("v2", events=20, changed=4, to_allow=1, diff=2.0),
        (NOW - 7200.0, b'{"live": {"action": "ALLOW"}, "shadow": {"action": "BLOCK", "model_version": "v2"}}'),
        (NOW - 5.0, b"not json"),
        *_shadow("v1", events=5),
    ]
    s = summarise(records, "v2", NOW - 3600.0, NOW)
    assert (s.events, s.action_changes, s.new_allows, s.unreadable, s.other_versions) == (20, 4, 1, 1, 5)
    assert s.mean_abs_diff_years == pytest.approx(2.0)
    assert s.changes == {"REQUIRE_VERIFICATION->ALLOW": 1, "REQUIRE_VERIFICATION->BLOCK": 3}
    assert violations(s, BOUNDS) == []  # a rate equal to its bound is within it
    assert violations(summarise([], "v2", NOW - 3600.0, NOW), BOUNDS)[0].startswith("shadow scored 0 events")
    tight = ShadowBounds(3600.0, 10, 0.1, 0.01, 1.0)
    assert len(violations(s, tight)) == 3


def test_deployed_stack_replays_promotions_and_rollbacks() -> None:
    history = [
        {"action": "promote", "model": "b", "previous": "a"},
        {"action": "refused", "model": "x"},
        {"action": "promote", "model": "c", "previous": "b"},
        {"action": "rollback", "model": "b"},
    ]
    assert deployed_stack(history) == ["a", "b"]
