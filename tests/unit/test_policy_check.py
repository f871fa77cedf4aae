"""`agegate policy check` states what `required_confidence` governs, and the statement is true of `decide`."""

from __future__ import annotations

from typing import Any

from stream.core.belief import YEAR_S, Belief, p_at_least
from stream.core.policy import Action, PolicyEvent, decide, load_policy, parse_policy
from stream.tools.policy_check import confidence_notes

NOW = 1_750_000_000.0


def one_surface(confidence: float) -> dict[str, Any]:
    return {
        "version": f"t-{confidence}",
        "default_jurisdiction": "X",
        "settings": {"hysteresis_margin": 0.1, "min_observations": 1},
        "jurisdictions": {
            "X": {
                "surfaces": {
                    "adult_content": {
                        "min_age": 18,
                        "buffer_years": 2,
                        "required_confidence": confidence,
                        "under_age_action": "BLOCK",
                    }
                }
            }
        },
    }


def test_raising_required_confidence_moves_a_user_from_block_to_require_verification() -> None:
    """The footgun itself: the stricter-looking policy blocks this user no longer."""
    std = 1.0
    mean = 16.4  # P(age < 18) ~ 0.945: above 0.90, below 0.97
    p_under = 1.0 - p_at_least(mean, std, 18)
    assert 0.90 < p_under < 0.97
    belief = Belief(NOW - mean * YEAR_S, 1.0 / std**2, NOW, 5, False, "m")
    event = PolicyEvent("X", "adult_content", NOW)
    lenient, strict = parse_policy(one_surface(0.90)), parse_policy(one_surface(0.97))
    assert decide(belief, event, lenient, half_life_s=1e12).action is Action.BLOCK
    assert decide(belief, event, strict, half_life_s=1e12).action is Action.REQUIRE_VERIFICATION


def test_notes_name_both_bars_for_every_surface() -> None:
    policy = load_policy()
    notes = confidence_notes(policy)
    surfaces = [(j, s) for j, jur in policy.jurisdictions.items() for s in jur.surfaces]
    assert len(notes) == len(surfaces)
    for jname, surface in surfaces:
        rule = policy.jurisdictions[jname].surfaces[surface]
        (note,) = [n for n in notes if n.startswith(f"{jname}/{surface}:")]
        c = f"{rule.required_confidence:g}"
        assert f"P(age >= {rule.min_age + rule.buffer_years:g}) >= {c}" in note
        assert f"P(age < {rule.min_age:g}) >= {c}" in note
        assert f"from {rule.under_age_action} to REQUIRE_VERIFICATION" in note


def test_notes_follow_the_policy_file() -> None:
    (note,) = confidence_notes(parse_policy(one_surface(0.97)))
    assert note.startswith("X/adult_content: required_confidence 0.97 is the bar for ALLOW (P(age >= 20) >= 0.97)")
    assert "BLOCK (P(age < 18) >= 0.97; 0.87 to keep it)" in note
