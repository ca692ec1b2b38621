"""The shared protocol module: times, topics, validation, allow-list signatures."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from werkbank_protocol import ProtocolError, format_ts, parse_ts
from werkbank_protocol.allowlist import badge_hash, canonical, key_bytes, sign, verify
from werkbank_protocol.messages import (
    AuthReq,
    AuthResp,
    SessionEnded,
    SessionStarted,
    Status,
    Telemetry,
    decode_as,
    decode_event,
    encode,
    request_id,
)
from werkbank_protocol.mqtt import parse_mqtt_url
from werkbank_protocol.topics import Suffix, parse_topic, subscription, topic

KEY = key_bytes("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
NOW = datetime(2026, 11, 22, 8, 15, 3, 120000, tzinfo=UTC)


def test_time_written_as_utc_with_milliseconds() -> None:
    assert format_ts(NOW) == "2026-11-22T08:15:03.120Z"
    berlin = NOW.astimezone(timezone(timedelta(hours=1)))
    assert format_ts(berlin) == "2026-11-22T08:15:03.120Z"


@pytest.mark.parametrize(
    "text", ["2026-11-22T08:15:03.120Z", "2026-11-22T09:15:03.12+01:00", "2026-11-22T08:15:03.120000001Z"]
)
def test_time_any_rfc3339_is_read(text: str) -> None:
    assert abs(parse_ts(text) - NOW) < timedelta(milliseconds=1)


@pytest.mark.parametrize("text", ["2026-11-22T08:15:03", "yesterday", "2026-13-01T00:00:00Z"])
def test_time_without_zone_or_garbage_is_refused(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_ts(text)


def test_topics_round_trip_and_refuse_bad_ids() -> None:
    assert topic("pi-laser-1", Suffix.AUTH_REQ) == "werkbank/v1/dev/pi-laser-1/auth/req"
    assert parse_topic("werkbank/v1/dev/pi-laser-1/auth/req") == ("pi-laser-1", Suffix.AUTH_REQ)
    assert subscription(Suffix.EVENT, shared=True) == "$share/werkbank/werkbank/v1/dev/+/event"
    for bad in [
        "werkbank/v1/dev/PI_1/event",
        "werkbank/v1/dev/pi-1/nope",
        "other/topic",
        "werkbank/v1/dev/ab/event",
    ]:
        with pytest.raises(ProtocolError):
            parse_topic(bad)


def test_messages_encode_and_decode_round_trip() -> None:
    event = SessionStarted(
        v=1,
        id=str(uuid.uuid4()),
        ts=format_ts(NOW),
        session=str(uuid.uuid4()),
        badge="04A224B2C35E80",
        offline=True,
    )
    assert decode_event(encode(event)) == event
    assert json.loads(encode(event))["type"] == "session_started"


def test_messages_unknown_extra_fields_are_ignored() -> None:
    body = {"v": 1, "online": True, "state": "locked", "new_field_of_v1_1": {"x": 1}}
    assert decode_as(Status, json.dumps(body).encode()).online is True


@pytest.mark.parametrize(
    ("payload", "code", "says"),
    [
        (b"{", "not_json", "not UTF-8 JSON"),
        (b'{"v":2,"online":true}', "wrong_version", "v1 only"),
        (b'{"online":true}', "wrong_version", "v1 only"),
        (b'{"v":1,"online":"yes"}', "invalid", "$.online"),
        (b"x" * 20000, "too_large", "limit"),
    ],
)
def test_messages_bad_payloads_say_what_is_wrong(payload: bytes, code: str, says: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_as(Status, payload)
    assert err.value.code == code and says in err.value.detail


def test_messages_badge_must_be_uppercase_hex_of_uid_length() -> None:
    base = {"v": 1, "id": str(uuid.uuid4()), "ts": format_ts(NOW)}
    for good in ["DEADBEEF", "04A224B2C35E80", "0123456789ABCDEF0123"]:
        assert decode_as(AuthReq, json.dumps({**base, "badge": good}).encode()).badge == good
    for bad in ["deadbeef", "DEADBEE", "XYZ12345", "", 12345678]:
        with pytest.raises(ProtocolError) as err:
            decode_as(AuthReq, json.dumps({**base, "badge": bad}).encode())
        assert "badge must be the card UID" in err.value.detail


def test_messages_supervise_needs_the_trainer_badge() -> None:
    body = {"v": 1, "id": str(uuid.uuid4()), "ts": format_ts(NOW), "badge": "DEADBEEF", "mode": "supervise"}
    with pytest.raises(ProtocolError, match="trainer_badge"):
        decode_as(AuthReq, json.dumps(body).encode())


def test_messages_auth_resp_trainer_is_an_optional_flag() -> None:
    body = {"v": 1, "req": str(uuid.uuid4()), "decision": "allow", "reason": "ok", "message": {"en": "Hi"}}
    assert decode_as(AuthResp, json.dumps(body).encode()).trainer is False, "absent: not a trainer"
    assert decode_as(AuthResp, json.dumps({**body, "trainer": True}).encode()).trainer is True
    with pytest.raises(ProtocolError, match="trainer"):
        decode_as(AuthResp, json.dumps({**body, "trainer": "yes"}).encode())


def test_messages_unknown_event_type_and_negative_duration_are_refused() -> None:
    base = {"v": 1, "id": str(uuid.uuid4()), "ts": format_ts(NOW), "session": str(uuid.uuid4())}
    with pytest.raises(ProtocolError) as err:
        decode_event(json.dumps({**base, "type": "explode"}).encode())
    assert err.value.code == "unknown_type"
    with pytest.raises(ProtocolError):
        decode_as(
            SessionEnded,
            json.dumps({**base, "type": "session_ended", "reason": "tap_out", "unlocked_s": -5}).encode(),
        )


def _doc(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "v": 1,
        "version": 3,
        "issued": format_ts(NOW),
        "expires": format_ts(NOW + timedelta(days=7)),
        "machine": "laser-1",
        "entries": [{"badge_hash": badge_hash(KEY, "DEADBEEF"), "until": None, "trainer": False}],
    }
    doc.update(over)
    return doc


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"v":1,"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"v":2,"x":' + b"[" * 3000 + b"]" * 3000 + b"}",  # a wrong version makes it explain itself
    ],
    ids=["bare", "in-a-field", "explained"],
)
def test_messages_nested_too_deep_is_invalid_on_both_sides(payload: bytes) -> None:
    """The shared decoder refuses JSON nested deeper than any message (issue 11: a RecursionError
    went up to the bridge as `internal`); the agent decodes through it too."""
    for kind in (AuthReq, Status):
        with pytest.raises(ProtocolError) as err:
            decode_as(kind, payload)
        assert err.value.code == "invalid" and "nested too deep" in err.value.detail
    with pytest.raises(ProtocolError) as err:
        decode_event(payload)
    assert err.value.code == "invalid"
    assert request_id(payload) is None


def test_messages_request_id_of_a_garbled_request() -> None:
    rid = str(uuid.uuid4())
    assert request_id(json.dumps({"v": 1, "id": rid, "badge": "nope"}).encode()) == rid
    assert request_id(json.dumps({"v": 1, "id": 42}).encode()) is None
    assert request_id(b"[1, 2]") is None
    assert request_id(b"not json") is None
    too_big = json.dumps({"id": rid, "pad": "x" * 20_000}).encode()
    assert request_id(too_big) is None, "not read at all"


def test_allowlist_nested_too_deep_is_refused() -> None:
    signed = sign(KEY, _doc())
    payload = json.dumps(signed).encode()[:-1] + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(ProtocolError) as err:
        verify(KEY, payload, NOW)
    assert err.value.code == "invalid"


def test_allowlist_signed_list_verifies() -> None:
    payload = json.dumps(sign(KEY, _doc())).encode()
    parsed = verify(KEY, payload, NOW, machine="laser-1")
    assert parsed.version == 3 and parsed.entries[0].badge_hash == badge_hash(KEY, "deadbeef")


def test_allowlist_signature_covers_fields_added_later() -> None:
    signed = sign(KEY, _doc(note="added by a newer server"))
    assert verify(KEY, json.dumps(signed).encode(), NOW).version == 3
    signed["note"] = "changed"
    with pytest.raises(ProtocolError, match="signature"):
        verify(KEY, json.dumps(signed).encode(), NOW)


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (
            lambda d: d["entries"].append({"badge_hash": "0" * 64, "until": None, "trainer": True}),
            "bad_signature",
        ),
        (lambda d: d.update(version=99), "bad_signature"),
        (lambda d: d.update(sig="00" * 32), "bad_signature"),
    ],
)
def test_allowlist_tampered_list_is_refused(tamper, code: str) -> None:  # type: ignore[no-untyped-def]
    signed = sign(KEY, _doc())
    tamper(signed)
    with pytest.raises(ProtocolError) as err:
        verify(KEY, json.dumps(signed).encode(), NOW)
    assert err.value.code == code


def test_allowlist_expired_wrong_machine_and_wrong_key_are_refused() -> None:
    payload = json.dumps(sign(KEY, _doc())).encode()
    with pytest.raises(ProtocolError) as err:
        verify(KEY, payload, NOW + timedelta(days=8))
    assert err.value.code == "expired"
    with pytest.raises(ProtocolError) as err:
        verify(KEY, payload, NOW, machine="printer-1")
    assert err.value.code == "wrong_machine"
    with pytest.raises(ProtocolError) as err:
        verify(key_bytes("ff" * 32), payload, NOW)
    assert err.value.code == "bad_signature"


def test_allowlist_canonical_json_is_stable() -> None:
    a = canonical({"b": 1, "a": [1, {"y": "ä", "x": None}], "sig": "ignored"})
    assert a == '{"a":[1,{"x":null,"y":"ä"}],"b":1}'.encode()


def test_allowlist_short_key_is_refused() -> None:
    with pytest.raises(ProtocolError):
        key_bytes("abcd")


@pytest.mark.parametrize(
    ("url", "host", "port", "user", "tls"),
    [
        ("mqtt://127.0.0.1", "127.0.0.1", 1883, None, False),
        ("mqtts://dev:p%40ss@broker.lab:8884", "broker.lab", 8884, "dev", True),
        ("mqtts://broker.lab", "broker.lab", 8883, None, True),
    ],
)
def test_mqtt_url_parsing(url: str, host: str, port: int, user: str | None, tls: bool) -> None:
    a = parse_mqtt_url(url)
    assert (a.host, a.port, a.username, a.tls) == (host, port, user, tls)


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://host:notaport"])
def test_mqtt_url_bad_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="MQTT URL"):
        parse_mqtt_url(url)


def test_messages_telemetry_energy_is_optional_and_never_negative() -> None:
    ts = format_ts(datetime.now(UTC))
    plain = decode_as(Telemetry, json.dumps({"v": 1, "ts": ts, "running": False}).encode())
    assert plain.energy_wh is None, "an agent without a metering plug sends none"
    body = {"v": 1, "ts": ts, "running": True, "power_w": 95.0, "energy_wh": 1234.5}
    metered = decode_as(Telemetry, json.dumps(body).encode())
    assert metered.energy_wh == 1234.5 and metered.power_w == 95.0
    with pytest.raises(ProtocolError) as info:
        decode_as(Telemetry, json.dumps({"v": 1, "ts": ts, "running": True, "energy_wh": -1}).encode())
    assert info.value.code == "invalid"
