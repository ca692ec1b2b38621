"""The offline allow-list store: only valid, current lists are taken; lookups respect every expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device_agent.allowlist_store import AllowlistStore
from tests.agent.helpers import ADA, BOB, KEY, MACHINE, allowlist_document, payload_of
from werkbank_protocol import format_ts
from werkbank_protocol.allowlist import key_bytes

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> AllowlistStore:
    return AllowlistStore(tmp_path / "allowlist.json", KEY, MACHINE)


def test_allowlist_valid_list_is_taken(store: AllowlistStore) -> None:
    assert store.check(ADA, NOW) == (False, False), "no list yet: nobody offline"
    assert store.offer(payload_of(allowlist_document(version=3, issued=NOW)), NOW)
    assert store.version == 3
    assert store.check(ADA, NOW) == (True, False)
    assert store.check(BOB, NOW) == (False, False)
    assert store.check(ADA.lower(), NOW) == (True, False), "UIDs are compared upper-case"


def test_allowlist_trainer_flag(store: AllowlistStore) -> None:
    document = allowlist_document(issued=NOW)
    document["entries"][0]["trainer"] = True
    from werkbank_protocol.allowlist import sign

    store.offer(payload_of(sign(KEY, document)), NOW)
    assert store.check(ADA, NOW) == (True, True)


def test_allowlist_tampered_signature_refused(store: AllowlistStore) -> None:
    document = allowlist_document(issued=NOW, badges={ADA: None})
    document["entries"].append({"badge_hash": "0" * 64, "until": None, "trainer": True})  # not re-signed
    assert not store.offer(payload_of(document), NOW)
    assert store.version is None and store.check(ADA, NOW) == (False, False)


def test_allowlist_signed_with_another_key_refused(store: AllowlistStore) -> None:
    other = key_bytes("b2" * 32)
    assert not store.offer(payload_of(allowlist_document(issued=NOW, key=other)), NOW)


def test_allowlist_expired_refused(store: AllowlistStore) -> None:
    old = allowlist_document(issued=NOW - timedelta(days=8), days=7)
    assert not store.offer(payload_of(old), NOW)
    assert store.version is None


def test_allowlist_wrong_machine_refused(store: AllowlistStore) -> None:
    assert not store.offer(payload_of(allowlist_document(issued=NOW, machine="laser-1")), NOW)
    assert store.version is None


def test_allowlist_lower_version_ignored_same_or_higher_taken(store: AllowlistStore) -> None:
    assert store.offer(payload_of(allowlist_document(version=5, issued=NOW, badges={ADA: None})), NOW)
    assert not store.offer(payload_of(allowlist_document(version=4, issued=NOW, badges={BOB: None})), NOW)
    assert store.version == 5 and store.check(BOB, NOW) == (False, False)
    assert store.offer(payload_of(allowlist_document(version=5, issued=NOW, badges={ADA: None})), NOW)
    assert store.offer(payload_of(allowlist_document(version=6, issued=NOW, badges={BOB: None})), NOW)
    assert store.check(BOB, NOW) == (True, False) and store.check(ADA, NOW) == (False, False)


def test_allowlist_entry_until_respected(store: AllowlistStore) -> None:
    until = NOW + timedelta(hours=1)
    store.offer(payload_of(allowlist_document(issued=NOW, badges={ADA: format_ts(until), BOB: None})), NOW)
    assert store.check(ADA, NOW) == (True, False)
    assert store.check(ADA, until) == (False, False)
    assert store.check(BOB, until) == (True, False)


def test_allowlist_never_allows_past_expires(store: AllowlistStore) -> None:
    store.offer(payload_of(allowlist_document(issued=NOW, days=1)), NOW)
    assert store.check(ADA, NOW + timedelta(hours=23)) == (True, False)
    assert store.check(ADA, NOW + timedelta(days=1)) == (False, False)


def test_allowlist_survives_restart(tmp_path: Path, store: AllowlistStore) -> None:
    store.offer(payload_of(allowlist_document(version=7, issued=NOW, days=1)), NOW)
    again = AllowlistStore(tmp_path / "allowlist.json", KEY, MACHINE)
    assert again.version == 7 and again.check(ADA, NOW) == (True, False)
    # Expired since: still held (its version keeps guarding against replays), but allows nobody.
    later = NOW + timedelta(days=2)
    expired = AllowlistStore(tmp_path / "allowlist.json", KEY, MACHINE)
    assert expired.version == 7 and expired.check(ADA, later) == (False, False)
    assert not expired.offer(payload_of(allowlist_document(version=6, issued=later)), later)


def test_allowlist_stored_under_another_key_is_not_used(tmp_path: Path, store: AllowlistStore) -> None:
    store.offer(payload_of(allowlist_document(issued=NOW)), NOW)
    rekeyed = AllowlistStore(tmp_path / "allowlist.json", key_bytes("c3" * 32), MACHINE)
    assert rekeyed.version is None and rekeyed.check(ADA, NOW) == (False, False)
