"""What a belief update answers, whichever repository made it (Redis, in memory): the beliefs after
a batch with every event's fate, where hysteresis state is addressed, and the per-user errors that
dead-letter one event without stopping the partition.

Core types, so the pipeline's ports can name them without importing an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.core.belief import Belief, Refusal
from stream.core.policy import Action
from stream.errors import InvalidEvent


class BeliefUpdateFailed(InvalidEvent):
    """Redis refused the script for this user's keys (e.g. a foreign value in them): dead-letter the
    event, keep the partition going. The detail holds the server's message, never the user id."""

    reason = "belief_update_failed"


class VerifiedAgeRefused(InvalidEvent):
    """A verified age that can never be applied (invalid, or dated too far in the future)."""

    reason = "verified_age_refused"


@dataclass(frozen=True, slots=True)
class SurfaceKey:
    """Where hysteresis state is kept: one last action per user, jurisdiction, surface and policy version.

    The version is part of the key because hysteresis may only hold what the same policy decided: an
    ALLOW granted under a laxer bar must not be kept open by the margin of a stricter one (after
    default-2026.1 raised the 16 surfaces' bar, a 15-year-old ALLOWed under default-2025.2 would
    otherwise stay ALLOWed down to the new bar minus the margin). A new version judges everyone
    afresh; the old version's fields expire with the belief hash.
    """

    user_id: str
    jurisdiction: str
    surface: str
    policy_version: str = ""

    @property
    def field(self) -> str:
        base = f"a:{self.jurisdiction}/{self.surface}"
        return f"{base}@{self.policy_version}" if self.policy_version else base


class ApplyResult(dict[str, Belief]):
    """Beliefs after a batch (users left without any belief are absent) plus per-event outcomes.

    It is a plain `dict[str, Belief]` for callers that only need beliefs; refusals are never dropped
    silently: `refused[user_id]` lists them with their reason.
    """

    def __init__(self) -> None:
        super().__init__()
        self.applied: dict[str, tuple[str, ...]] = {}
        self.duplicates: dict[str, tuple[str, ...]] = {}
        self.ignored: dict[str, tuple[str, ...]] = {}
        self.refused: dict[str, tuple[Refusal, ...]] = {}
        # Last action per "jurisdiction/surface", read in the same round trip (hysteresis input).
        self.previous_actions: dict[str, dict[str, Action]] = {}
        # Users whose update Redis refused (nothing of theirs was applied): dead-letter their events.
        self.errors: dict[str, BeliefUpdateFailed] = {}
