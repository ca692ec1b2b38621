"""Secure badges on the server: who gets which card keys, and what links a badge (services/cards)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from server.db import Database
from server.models import (
    AuditLog,
    Badge,
    BadgeKind,
    CardSecurity,
    Device,
    EnrolmentStatus,
    Machine,
    Person,
    Site,
)
from server.services import allowlists, cards
from server.services.decision import decide
from werkbank_protocol.allowlist import badge_hash, key_bytes
from werkbank_protocol.cardkeys import card_key, unwrap

QUINN = "04A224B2C35E80"
NEW_CARD = "04C0FFEE123456"
NOW = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)


def _person(s: object, name: str) -> Person:
    return s.scalars(select(Person).where(Person.name == name)).one()  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def station(lab: Database) -> str:
    with lab.session() as s:
        device = s.get(Device, "pi-laser-1")
        assert device is not None
        device.enrolment_station = True
    return "pi-laser-1"


def test_cards_grant_needs_a_flagged_station_with_a_pending_enrolment(lab: Database, station: str) -> None:
    with lab.session() as s:
        with pytest.raises(cards.CardError, match="not an enrolment station"):
            cards.grant(s, "pi-printer-1", NEW_CARD)
        with pytest.raises(cards.CardError, match="No badge is waiting"):
            cards.grant(s, station, NEW_CARD)
        device = s.get(Device, station)
        assert device is not None
        cards.start_enrolment(s, _person(s, "Uma Unqualified"), device, None)
        with pytest.raises(cards.CardError, match="a badge already"):
            cards.grant(s, station, QUINN)
        granted = cards.grant(s, station, NEW_CARD)
        master = cards.site_master(s, s.scalars(select(Site)).one())
        assert device.machine is not None
        key = key_bytes(device.machine.allowlist_key)
        assert [
            unwrap(key, f"{granted.enrolment}:{NEW_CARD}:{n}", k) for n, k in enumerate(granted.keys)
        ] == [card_key(master, NEW_CARD, n) for n in range(5)]
        assert s.scalar(select(AuditLog.action).order_by(AuditLog.id.desc()).limit(1)) == "badge.enrol_keys"


def test_cards_enrolment_links_only_the_card_the_station_was_sent_keys_for(
    lab: Database, station: str
) -> None:
    with lab.session() as s:
        device = s.get(Device, station)
        other = s.get(Device, "pi-printer-1")
        assert device is not None and other is not None
        uma = _person(s, "Uma Unqualified")
        enrolment = cards.start_enrolment(s, uma, device, None)
        granted = cards.grant(s, station, NEW_CARD)
        # Another device, another UID, an unknown enrolment: nothing is linked.
        assert cards.complete_enrolment(s, other, granted.enrolment, NEW_CARD, NOW) is None
        assert cards.complete_enrolment(s, device, granted.enrolment, "04C0FFEE654321", NOW) is None
        assert (
            cards.complete_enrolment(s, device, "00000000-0000-4000-8000-000000000000", NEW_CARD, NOW) is None
        )
        assert s.scalar(select(Badge).where(Badge.uid == NEW_CARD)) is None
        badge = cards.complete_enrolment(s, device, granted.enrolment, NEW_CARD, NOW)
        assert badge is not None and badge.kind == BadgeKind.SECURE and badge.person_id == uma.id
        assert enrolment.status == EnrolmentStatus.DONE
        # The same report again (an event delivered twice) changes nothing.
        assert cards.complete_enrolment(s, device, granted.enrolment, NEW_CARD, NOW) is badge


def test_cards_cancelled_enrolment_links_nothing(lab: Database, station: str) -> None:
    with lab.session() as s:
        device = s.get(Device, station)
        assert device is not None
        enrolment = cards.start_enrolment(s, _person(s, "Uma Unqualified"), device, None)
        granted = cards.grant(s, station, NEW_CARD)
        cards.cancel_enrolment(s, enrolment, None)
        assert cards.complete_enrolment(s, device, granted.enrolment, NEW_CARD, NOW) is None
        assert s.scalar(select(Badge).where(Badge.uid == NEW_CARD)) is None


def test_cards_allowlist_carries_slot_keys_only_at_a_secure_site(lab: Database) -> None:
    with lab.session() as s:
        machine = s.scalars(select(Machine).where(Machine.slug == "printer-1")).one()
        badge = s.scalars(select(Badge).where(Badge.uid == QUINN)).one()
        badge.kind = BadgeKind.SECURE
        s.flush()
        assert allowlists.build(s, machine, NOW, 7)["cards"] == []  # a uid site: no keys anywhere
        site = machine.site
        cards.set_card_security(s, site, CardSecurity.SECURE, None)
        machine.card_key_slot = 2
        document = allowlists.build(s, machine, NOW, 7)
        key = key_bytes(machine.allowlist_key)
        hashed = badge_hash(key, QUINN)
        assert document["card_security"] == "secure" and document["card_slot"] == 2
        assert [c["badge_hash"] for c in document["cards"]] == [hashed]  # secure badges only
        assert unwrap(key, hashed, document["cards"][0]["key"]) == card_key(
            cards.site_master(s, site), QUINN, 2
        )
        assert site.card_master_key is not None and site.card_master_key not in str(document)


@pytest.mark.parametrize(
    ("rule", "card_auth", "reason"),
    [
        ("uid", None, "ok"),
        ("uid", "failed", "badge_not_genuine"),
        ("secure", "none", "ok"),
        ("secure", "failed", "badge_not_genuine"),
        ("secure", "ok", "ok"),
        ("secure_required", None, "badge_not_genuine"),
        ("secure_required", "none", "badge_not_genuine"),
        ("secure_required", "ok", "ok"),
    ],
)
def test_decision_card_rule(lab: Database, rule: str, card_auth: str | None, reason: str) -> None:
    with lab.session() as s:
        machine = s.scalars(select(Machine).where(Machine.slug == "printer-1")).one()
        machine.site.card_security = CardSecurity(rule)
        s.flush()
        decision = decide(s, machine, QUINN, NOW, card_auth=card_auth)
        assert decision.reason == reason
        if reason == "badge_not_genuine":
            assert decision.person is None  # the copy learns nothing about the person
