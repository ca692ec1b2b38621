"""deploy/systemd/werkbank-backup.service and .timer: in step with the other units, nightly,
and the backup they start, run with the unit's command line and deploy/werkbank.env.example,
makes a complete set (the shipped settings name the files a restored server needs)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

from tests.deploy.test_stack import (
    DEPLOY,
    ROOT,
    UNITS,
    command_line,
    env_file,
    settings_file,
    unit_service,
    werkbank,
)


def _sections(name: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def test_backup_unit_runs_as_the_other_units_do() -> None:
    backup = unit_service("werkbank-backup.service")
    scheduler = unit_service("werkbank-scheduler.service")
    for key in ("User", "Group", "EnvironmentFile", "WorkingDirectory", "NoNewPrivileges", "ProtectSystem"):
        assert backup[key] == scheduler[key], key
    assert backup["ReadWritePaths"] == scheduler["ReadWritePaths"] == "/var/lib/werkbank"
    assert backup["Type"] == "oneshot"  # the timer's run ends with the backup, failed or not
    assert shlex.split(backup["ExecStart"]) == ["/opt/werkbank/.venv/bin/werkbank", "backup"]
    assert "postgresql.service" in _sections("werkbank-backup.service")["Unit"]["After"]
    # Where the shipped settings put the sets, the unit may write.
    shipped = env_file((DEPLOY / "werkbank.env.example").read_text())
    assert Path(shipped["WERKBANK_BACKUP_DIR"]).is_relative_to(backup["ReadWritePaths"])


def test_backup_timer_runs_it_every_night_and_catches_up_after_a_night_off() -> None:
    timer = _sections("werkbank-backup.timer")
    assert re.fullmatch(r"\*-\*-\* 0[0-5]:[0-5]\d(:[0-5]\d)?", timer["Timer"]["OnCalendar"]), "nightly"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["Unit"] == "werkbank-backup.service"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_backup_unit_as_shipped_makes_a_complete_set(database_url: str, tmp_path: Path) -> None:
    """The unit's command line with the example settings (paths moved under a folder of the
    test's own, as the stack test does): a set with every file the settings name."""
    root = tmp_path / "host"
    shipped = env_file((DEPLOY / "werkbank.env.example").read_text())
    moved = {
        key: os.pathsep.join(f"{root}{path}" for path in shipped[key].split(os.pathsep))
        for key in (
            "WERKBANK_VAR_DIR",
            "WERKBANK_BACKUP_DIR",
            "WERKBANK_BACKUP_KEY_FILE",
            "WERKBANK_BACKUP_FILES",
            "MQTT_CA_FILE",
        )
    }
    secret_files = [Path(p) for p in moved["WERKBANK_BACKUP_FILES"].split(os.pathsep)] + [
        Path(moved["MQTT_CA_FILE"])
    ]
    for n, path in enumerate(secret_files):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"secret file {n}\n")
    settings = settings_file(root, {"DATABASE_URL": database_url, "SECRET_KEY": "ab" * 32, **moved})
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"} | env_file(
        settings.read_text()
    )
    # The admin makes the key once, as docs/deploy.md says; then the timer starts the unit.
    assert "backup key written to" in werkbank(env, "backup-key")
    argv = command_line("werkbank-backup.service", root, {})
    run = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr

    backups = Path(moved["WERKBANK_BACKUP_DIR"])
    [made] = sorted(backups.glob("werkbank-*"))
    manifest = json.loads((made / "manifest.json").read_text())
    assert manifest["database"] == ("sqlite" if database_url.startswith("sqlite") else "postgresql")
    assert sorted(manifest["secret_files"]) == sorted(str(p.resolve()) for p in secret_files)
    status = json.loads((backups / "backup-status.json").read_text())
    assert status["last_success"]["set"] == made.name
