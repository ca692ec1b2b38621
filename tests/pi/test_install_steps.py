"""The Pi check (`make pi-check`) runs the bundle's INSTALL.md as written: these tests keep its
reading of the file and its list of commands that cannot run under emulation true to the file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from server.db import Database
from server.services.provisioning import provision_device
from tests.pi.check import compiled_packages, unit_settings
from tests.pi.install_steps import BROKER_STEP, NOT_UNDER_EMULATION, parse, strip_comment

ROOT = Path(__file__).resolve().parents[2]


def _install_md(lab: Database, tmp_path: Path) -> str:
    with lab.session() as s:
        bundle = provision_device(
            s, "printer-1", tmp_path / "bundle", "mqtts://werkbank.lab:8883", ca_file=_ca(tmp_path)
        )
    return (bundle.directory / "INSTALL.md").read_text()


def _ca(tmp_path: Path) -> Path:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return ca


def test_install_steps_every_command_runs_or_has_a_reason_not_to(lab: Database, tmp_path: Path) -> None:
    commands = parse(_install_md(lab, tmp_path))
    steps = {c.step for c in commands}
    assert steps == {1, 2, 3, 4, 5, 6, 7, 8}, steps
    skipped = [c.line for c in commands if c.skip_reason() is not None]
    # Every exception matches a command the file still has: a renamed command fails here rather
    # than running unnoticed (or no longer being run).
    for pattern in NOT_UNDER_EMULATION:
        assert any(re.fullmatch(pattern, line) for line in skipped), f"{pattern!r} matches no command"
    run = [c.line for c in commands if c.skip_reason() is None and c.step != BROKER_STEP]
    assert any(line.startswith("sudo apt install -y python3-venv") for line in run)
    assert any("device_agent.config --check /etc/werkbank/agent.toml" in line for line in run)
    assert "sudo install -m 0644 ca.crt /etc/werkbank/" in run


def test_install_steps_pip_line_installs_the_pi_extra_as_pyproject_lists_it(
    lab: Database, tmp_path: Path
) -> None:
    """INSTALL.md's pip line names the `pi` extra's packages one by one (mfrc522 goes in with
    --no-deps): the two lists must not drift apart."""
    (line,) = [
        c.line for c in parse(_install_md(lab, tmp_path)) if "pip install" in c.line and "[agent]" in c.line
    ]
    named = set(line.split('[agent]"', 1)[1].split())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pi_extra = {
        re.split(r"[<>=;\s\[]", req, maxsplit=1)[0]
        for req in pyproject["project"]["optional-dependencies"]["pi"]
    }
    assert named == pi_extra


def test_install_steps_parse_reads_only_numbered_shell_blocks() -> None:
    markdown = "\n".join(
        [
            "# Title",
            "```sh",
            "echo not in a step",
            "```",
            "## 2. The OS",
            "```sh",
            "sudo apt update   # refresh",
            "sudo apt install a \\",
            "  b",
            "```",
            "```toml",
            "key = 1",
            "```",
            "## Later",
            "```sh",
            "echo later",
            "```",
        ]
    )
    commands = parse(markdown)
    assert [(c.step, c.line) for c in commands] == [(2, "sudo apt update"), (2, "sudo apt install a b")]


def test_install_steps_comments_are_stripped_outside_quotes_only() -> None:
    assert strip_comment("sudo sed -i '/^x:/d' f   # drop") == "sudo sed -i '/^x:/d' f"
    assert strip_comment("echo 'a # b'") == "echo 'a # b'"
    assert strip_comment("echo a#b") == "echo a#b"


def test_install_steps_reading_pips_log_names_what_it_compiled() -> None:
    log = "\n".join(
        [
            "Collecting spidev",
            "  Downloading spidev-3.6.tar.gz (11 kB)",
            "  Downloading lgpio-0.2.2.0-cp311-cp311-manylinux_2_34_aarch64.whl (364 kB)",
            "Building wheels for collected packages: spidev",
            "  Building wheel for spidev (setup.py): started",
            "  Running setup.py install for RPi.GPIO: started",
        ]
    )
    assert compiled_packages(log) == (["rpi.gpio", "spidev"], ["spidev"])


def test_install_steps_unit_settings_read_the_agents_unit() -> None:
    unit = unit_settings((ROOT / "deploy/systemd/werkbank-agent.service").read_text())
    assert unit["User"] == "werkbank-agent" and unit["WorkingDirectory"] == "/var/lib/werkbank-agent"
    assert unit["ExecStart"].endswith("--config /etc/werkbank/agent.toml")
