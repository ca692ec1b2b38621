"""The shell commands of a provisioning bundle's INSTALL.md, and which of them run under emulation.

INSTALL.md is the one source of the install steps: :func:`parse` reads its ``## N. title``
sections and their ```` ```sh ```` blocks, and the Pi check (tests/pi/check.py) runs them as they
are. What cannot run in an emulated root without a Pi's hardware or a running systemd is listed
in :data:`NOT_UNDER_EMULATION` with the reason and what the check does instead;
tests/pi/test_install_steps.py fails when INSTALL.md gains a command nobody decided about, or an
entry here matches no command any more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Step 1 runs on the broker's host, every other step on the Pi.
BROKER_STEP = 1

# A command that does not apply under emulation -> why, and what the check does instead.
NOT_UNDER_EMULATION: dict[str, str] = {
    r"sudo reboot": "a chroot does not boot (config.txt is still written and checked)",
    r"ls /dev/spidev0\.\*": "no SPI bus without a Pi: the agent runs with --simulate",
    r"sudo systemctl daemon-reload": "no systemd runs in a chroot",
    r"sudo systemctl enable --now werkbank-agent": (
        "no systemd runs in a chroot: the check starts the unit's ExecStart as its User in its "
        "WorkingDirectory, with --simulate"
    ),
    r"systemctl status werkbank-agent": "the check reads the agent's log instead",
    r"journalctl -u werkbank-agent -f": (
        "the check reads the agent's log and its status message on the broker instead"
    ),
}

_SECTION = re.compile(r"^## (\d+)\. (.+)$")
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Command:
    step: int
    title: str
    line: str

    def skip_reason(self) -> str | None:
        for pattern, reason in NOT_UNDER_EMULATION.items():
            if re.fullmatch(pattern, self.line):
                return reason
        return None


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` preceded by whitespace, outside quotes)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def parse(markdown: str) -> list[Command]:
    """Every command of every ```sh block under a numbered section (``## 4. ...``), in order, with
    comments dropped and continued lines joined."""
    commands: list[Command] = []
    step, title = 0, ""
    block = ""  # "" outside a fence, else the fence's language ("sh", or another one to skip)
    pending = ""
    for raw in markdown.splitlines():
        fence = _FENCE.match(raw)
        if fence:
            block = "" if block else (fence.group(1) or "text")
            continue
        if block in ("sh", "bash", "shell"):
            line = pending + strip_comment(raw).strip()
            if line.endswith("\\"):
                pending = line[:-1].rstrip() + " "
                continue
            pending = ""
            if line and step:  # commands outside a numbered step (e.g. "Later") are no install step
                commands.append(Command(step, title, line))
        elif not block and raw.startswith("## "):
            section = _SECTION.match(raw)
            step, title = (int(section.group(1)), section.group(2)) if section else (0, raw[3:])
    return commands
