"""Docs as tests: a setting, topic, event type, reason code or command that is not documented fails."""

from __future__ import annotations

import re
from pathlib import Path

from server.cli import COMMANDS
from werkbank_protocol.messages import END_REASONS, EVENT_TYPES, REASONS
from werkbank_protocol.topics import Suffix

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# docs/protocol-v1.md is the contract (a verbatim copy of the project's shared PROTOCOL.md);
# docs/protocol.md lists our documented additions.
CONTRACT = ROOT / "docs" / "protocol-v1.md"
PROTOCOL = CONTRACT.read_text() + (ROOT / "docs" / "protocol.md").read_text()


def test_docs_contract_copy_is_current() -> None:
    shared = ROOT.parent / "shared" / "PROTOCOL.md"
    if shared.exists():  # beside a checkout in the workplace; a plain clone has only the copy
        assert CONTRACT.read_text() == shared.read_text()


def test_docs_every_setting_is_in_the_readme() -> None:
    config = (ROOT / "server" / "config.py").read_text()
    names = set(re.findall(r'(?:environ\.get|_bool|_int)\(\s*"([A-Z_]+)"', config))
    assert names, "no settings found: did config.py change shape?"
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert missing == []


def test_docs_every_topic_event_type_and_reason_is_documented() -> None:
    for suffix in Suffix:
        assert f"`{suffix.value}`" in PROTOCOL, suffix
    for name in (*EVENT_TYPES, *REASONS, *END_REASONS):
        assert name in PROTOCOL, name


def test_docs_every_cli_command_is_in_the_readme() -> None:
    for command in COMMANDS:
        assert f"werkbank {command.name}" in README, command.name


def test_docs_every_fault_code_of_a_plugin_is_documented() -> None:
    from device_agent.hardware.plugins import all_plugins

    reference = (ROOT / "firmware_config" / "agent-config.md").read_text()
    codes = {code for plugin in all_plugins() for code in plugin.faults}
    assert {"switch_unconfirmed", "moonraker_unreachable", "bambu_certificate_rejected"} <= codes
    for code in sorted(codes):
        assert f"`{code}`" in PROTOCOL, code
        assert f"`{code}`" in reference, code


def test_docs_every_status_field_is_documented() -> None:
    """A field `status` carries is in the contract's status line or in docs/protocol.md's additions."""
    import msgspec

    from werkbank_protocol.messages import Status

    contract = CONTRACT.read_text()
    additions = (ROOT / "docs" / "protocol.md").read_text()
    for field in msgspec.structs.fields(Status):
        assert (
            f'"{field.name}"' in contract
            or f"| `status` | `{field.name}`" in additions
            or (f"`{field.name}`" in additions)
        ), field.name
    for added in ("outbox_depth", "outbox_oldest_s", "allowlist_age_s"):
        assert f"| `status` | `{added}`" in additions, added
