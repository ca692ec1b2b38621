"""The card crypto against NXP's own published examples.

Sources (public NXP application notes):
- AN10922 "Symmetric key diversifications", section 2.2.1 (AES-128 example): master key
  00112233445566778899AABBCCDDEEFF, UID 04782E21801D80, AID 3042F5, system identifier
  "NXP Abu" (4E585020416275); K1, K2 and the diversified key as printed there.
- AN12196 "NTAG 424 DNA and NTAG 424 DNA TagTamper features and hints": section 6.6
  (AuthenticateEV2First with the all-zero key 0), section 6.10 (with key 3) and section 7.3
  (GetCardUID in CommMode.Full). Each step's bytes are replayed through a scripted card.
"""

from __future__ import annotations

import pytest

from device_agent.cards import CardAuthFailed
from device_agent.cards.ntag424 import SecureSession, authenticate, jamcrc, session_keys
from werkbank_protocol.cardkeys import card_key, cmac_subkeys, diversify

H = bytes.fromhex


class ScriptedCard:
    """A transport that checks each command APDU against the note's and answers with the note's."""

    def __init__(self, script: list[tuple[str, str]]) -> None:
        self.script = [(H(cmd), H(resp)) for cmd, resp in script]

    def exchange(self, apdu: bytes) -> bytes:
        expected, response = self.script.pop(0)
        assert apdu.hex().upper() == expected.hex().upper()
        return response


def test_an10922_aes128_diversification_example() -> None:
    master = H("00112233445566778899AABBCCDDEEFF")
    k1, k2 = cmac_subkeys(master)
    assert k1 == H("FBC9F75C9413C041DFEE452D3F0706D1")
    assert k2 == H("F793EEB928278083BFDC8A5A7E0E0D25")
    m = H("04782E21801D80") + H("3042F5") + H("4E585020416275")
    assert diversify(master, m) == H("A8DD63A3B89D54B37CA802473FDA9175")


def test_card_keys_differ_per_card_slot_and_site() -> None:
    site = H("00112233445566778899AABBCCDDEEFF")
    other_site = H("FFEEDDCCBBAA99887766554433221100")
    uid = "04782E21801D80"
    keys = {card_key(site, uid, n) for n in range(5)}
    assert len(keys) == 5
    assert card_key(site, uid, 1) != card_key(site, "04782E21801D81", 1)
    assert card_key(site, uid, 1) != card_key(other_site, uid, 1)


def test_an12196_authenticate_ev2_first_key0_example() -> None:
    card = ScriptedCard(
        [
            ("9071000002000000", "A04C124213C186F22399D33AC2A3021591AF"),
            (
                "90AF00002035C3E05A752E0144BAC0DE51C1F22C56B34408A23D8AEA266CAB947EA8E0118D00",
                "3FA64DB5446D1F34CD6EA311167F5E4985B89690C04A05F17FA7AB2F081206639100",
            ),
        ]
    )
    session = authenticate(card, 0, bytes(16), random=lambda n: H("13C5DB8A5930439FC3DEF9A4C675360F"))
    assert session.ti == H("9D00C4DF")
    assert session.enc_key == H("1309C877509E5A215007FF0ED19CA564")
    assert session.mac_key == H("4C6626F5E72EA694202139295C7A7FC7")
    assert session.counter == 0
    assert not card.script


def test_an12196_authenticate_ev2_first_key3_example() -> None:
    card = ScriptedCard(
        [
            ("9071000002030000", "B875CEB0E66A6C5CD00898DC371F92D191AF"),
            (
                "90AF000020FF0306E47DFBC50087C4D8A78E88E62DE1E8BE457AA477C707E2F0874916A8B100",
                "0CC9A8094A8EEA683ECAAC5C7BF20584206D0608D477110FC6B3D5D3F65C3A6A9100",
            ),
        ]
    )
    session = authenticate(card, 3, bytes(16), random=lambda n: H("B98F4C50CF1C2E084FD150E33992B048"))
    assert session.ti == H("7614281A")
    assert (session.enc_key, session.mac_key) == (
        H("7A93D6571E4B180FCA6AC90C9A7488D4"),
        H("FC4AF159B62E549B5812394CAB1918CC"),
    )


def test_an12196_session_key_derivation_matches_section_6_6() -> None:
    rnd_a = H("13C5DB8A5930439FC3DEF9A4C675360F")
    rnd_b = H("B9E2FC789B64BF237CCCAA20EC7E6E48")
    assert session_keys(bytes(16), rnd_a, rnd_b) == (
        H("1309C877509E5A215007FF0ED19CA564"),
        H("4C6626F5E72EA694202139295C7A7FC7"),
    )


def test_an12196_get_card_uid_full_mode_example() -> None:
    card = ScriptedCard(
        [("90510000088E2C155ADDA99BE300", "70756055688505B52A5E26E59E329CD6595F672298EA41B79100")]
    )
    session = SecureSession(
        card, 0, H("DF055522"), H("2B4D963C014DC36F24F69A50A394F875"), H("379D32130CE61705DD5FD8C36B95D764")
    )
    assert session.get_card_uid() == H("04958CAA5C5E80")
    assert session.counter == 1


def test_an12196_get_card_uid_refuses_a_forged_answer_mac() -> None:
    card = ScriptedCard(
        [("90510000088E2C155ADDA99BE300", "70756055688505B52A5E26E59E329CD6595F672298EA41B89100")]
    )
    session = SecureSession(
        card, 0, H("DF055522"), H("2B4D963C014DC36F24F69A50A394F875"), H("379D32130CE61705DD5FD8C36B95D764")
    )
    with pytest.raises(CardAuthFailed):
        session.get_card_uid()


def test_jamcrc_is_crc32_without_final_inversion() -> None:
    # CRC32("123456789") is CBF43926; JAMCRC is its complement, sent least significant byte first.
    assert jamcrc(b"123456789") == (0xCBF43926 ^ 0xFFFFFFFF).to_bytes(4, "little")
