"""Redis key names of a user: one slot per user whatever the id holds, bounded size, no raw id."""

from __future__ import annotations

import subprocess

import pytest
from redis.crc import key_slot

from stream.adapters.belief_store import BeliefStore, tag_key, user_key, user_tag
from stream.config import load_settings
from stream.errors import ConfigError
from tests.support.odd_ids import ODD_IDS

# The shared odd ids, plus the cases key derivation must tell apart: a surrogate pair vs the code
# point it spells, and two spellings of "café".
IDS = [
    *ODD_IDS,
    "\U0001f476\U0001f3fd",
    "\udc80",
    "\ud800\udc00",
    "\U00010000",
]


def store(prefix: str = "agegate") -> BeliefStore:
    return BeliefStore(None, prefix=prefix, half_life_s=1.0, ttl_s=1.0)  # type: ignore[arg-type]  # no I/O here


@pytest.mark.parametrize("user_id", IDS, ids=range(len(IDS)))
def test_both_keys_of_a_user_share_a_slot_and_have_a_fixed_size(user_id: str) -> None:
    s = store()
    b, e = s.belief_key(user_id), s.events_key(user_id)
    assert key_slot(b.encode()) == key_slot(e.encode())
    assert len(b) == len(e) == len("agegate:{}:b") + 32
    tag = user_tag(user_id)
    assert len(tag) == 32
    assert int(tag, 16) >= 0  # hex
    assert b == tag_key("agegate", tag, "b") == user_key("agegate", user_id, "b")


def test_distinct_ids_get_distinct_tags_and_the_same_id_always_the_same() -> None:
    # "\ud800\udc00" (a surrogate pair as two code points) and "\U00010000" are different strs.
    assert len({user_tag(u) for u in IDS}) == len(IDS)
    assert user_tag("{abc}") == user_tag("{abc}")
    assert "abc" not in user_key("p", "{abc}", "b")


def test_the_operator_recipe_in_the_docs_finds_the_key() -> None:
    """docs/operations.md: printf '%s' "$USER_ID" | sha256sum | cut -c1-32."""
    for user_id in ("user-42", "caf\u00e9 \U0001f476", "}{"):
        out = subprocess.run(
            ["bash", "-c", "printf '%s' \"$1\" | sha256sum | cut -c1-32", "_", user_id],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert store().belief_key(user_id) == f"agegate:{{{out}}}:b"


@pytest.mark.parametrize("prefix", ["a{b", "a}b", "a{}"])
def test_a_prefix_with_braces_is_refused(prefix: str) -> None:
    """`a{}` would make the whole key the hash input again (an empty tag does not count)."""
    with pytest.raises(ValueError, match="prefix"):
        store(prefix)
    with pytest.raises(ConfigError, match="redis_key_prefix"):
        load_settings(environ={}, redis_key_prefix=prefix)


def test_a_cluster_url_with_a_database_number_is_refused() -> None:
    with pytest.raises(ConfigError, match="database 0"):
        load_settings(environ={}, redis_url="redis://h:6379/3", redis_cluster=True)
    assert load_settings(environ={}, redis_url="redis://h:6379/3").redis_url.endswith("/3")
