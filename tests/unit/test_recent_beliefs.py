"""RecentBeliefs (stream/pipeline/pipeline.py): the bounded memory that lets the worker notice lost beliefs."""

from __future__ import annotations

from stream.pipeline.fuse import RecentBeliefs


def test_remembers_users_and_forgets_the_least_recently_stored_first() -> None:
    recent = RecentBeliefs(capacity=2)
    recent.add("a")
    recent.add("b")
    recent.add("a")  # refreshed: now the most recent
    recent.add("c")  # over capacity: "b" goes, not "a"
    assert "a" in recent
    assert "c" in recent
    assert "b" not in recent
