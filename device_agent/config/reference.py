"""The agent's config reference (firmware_config/agent-config.md), rendered from the schema.

Every key's table row comes from :data:`device_agent.config.SCHEMA` (plug-ins' keys included), the
prose about monitors, switches, restarts and the lights from here and from the plug-ins, so the
reference and the checks cannot drift. ``python -m device_agent.config --docs`` prints it.
"""

from __future__ import annotations

from device_agent.config import SCHEMA
from device_agent.schema import Key

_TYPE_NAMES: dict[type, str] = {str: "text", int: "whole number", float: "number", bool: "true/false"}


def _default_text(key: Key) -> str:
    if key.required:
        return "required"
    if key.default is None:
        return "not set"
    if isinstance(key.default, bool):
        return f"`{str(key.default).lower()}`"
    if isinstance(key.default, str):
        return f'`"{key.default}"`'
    return f"`{key.default:g}`" if isinstance(key.default, float) else f"`{key.default}`"


# Where MONITOR_DOCS lists the backends, the plug-ins' own paragraphs go (_monitor_docs).
PLUGIN_DOCS_HERE = "<plug-in monitors>"
# The prose part of the reference about [monitor]; render_docs() puts it after the reader backends.
MONITOR_DOCS: tuple[str, ...] = (
    "## Machine monitors and the safety rules",
    "",
    "`[monitor] backend` says how the agent learns that the machine works:",
    "",
    "- `none`: it cannot tell. `run_s` stays 0 and every lock happens at once.",
    PLUGIN_DOCS_HERE,
    "",
    "The rules, whichever monitor: a lock that falls due while a job runs (tap-out, idle timeout, the",
    "session's `until`, a booking's end or any other remote `lock` without `force`) waits: the agent sends",
    '`lock_deferred` once, keeps the relay closed, shows "lock pending" on the lights, and locks with the',
    "original reason as soon as the job ends. Only a `lock` command with `force: true` cuts power mid-job",
    "(the job is then reported `cancelled`). The idle timeout counts from the end of the last job.",
    "A job while no session is open (the relay should have cut the machine's power) is a `fault`",
    "(`job_without_session`): it cannot be a `job_started`, which always belongs to a session.",
    "",
    "## Restarts, crashes, power loss and the relay",
    "",
    "The open session is kept in `outbox.sqlite` beside the events. Its start and its end are each one",
    "SQLite transaction together with their events (`session_started`; `session_ended`, after a",
    "`job_finished` when a forced lock cuts a job), so a crash leaves either the session open and no end",
    "event, or the end event stored and no open session, never both. The end is on disk before the relay",
    "opens: after a crash in between, the next start finds no open session and makes the relay open.",
    "",
    "**The agent restarts, the Pi does not** (SIGTERM, an upgrade, a crash, `kill -9`, a restart by",
    "systemd): the next start finds the session open in the same boot (the kernel's boot id,",
    "`/proc/sys/kernel/random/boot_id`, is stored with it) and carries it on, whatever the machine is",
    "doing. It makes the relay closed at once, as the first thing it does with the pin, shows",
    '"unlocked" again, and the person\'s next tap ends that same session (same session id; a job that',
    "still runs keeps its job id). Durations are read from the boot clock (`CLOCK_BOOTTIME`), which",
    "runs on across processes, so `unlocked_s` includes the restart. The trainer window and the",
    '"ending soon" warning start afresh; the idle timeout counts from the last time the machine was seen',
    "busy before the restart; run time during the restart is not counted (nobody measured it). A job the",
    "monitor no longer sees after the restart is reported `job_finished` `failed`, up to the last alive",
    "mark: its end was not seen.",
    "",
    "Stopping the agent with a session open leaves the relay closed: the pin stays an output at its",
    "level and is hidden from gpiozero, which would otherwise make it a floating input on exit (and a",
    "floating input opens the relay). Between the two processes the pin keeps its level only if the",
    "kernel keeps it: Raspberry Pi OS kernels do on Pi 1-4 (`pinctrl_bcm2835.persist_gpio_outputs`, on by",
    "default; not checked on a Pi 5). Do not set `dtparam=strict_gpiod` in config.txt or",
    "`pinctrl_bcm2835.persist_gpio_outputs=n` on the kernel command line: with either, every restart of",
    "the agent switches the machine off for a moment. Keep gpiozero's default pin factory (lgpio): with",
    '`[gpio] pin_factory = "rpigpio"`, RPi.GPIO\'s `cleanup()` at exit resets every pin it set up, the',
    "relay's too. **Safety:** if the relay did drop during the restart (one of these settings, a relay",
    "board that releases when its input floats, a crash that took the pin with it), the machine lost",
    "power for the restart and gets it back without a tap when the agent starts again and carries the",
    "session on. The person who opened the session is normally still at the machine, but a machine that",
    "can be dangerous when its power returns must not start by itself: its own interlocks, e-stop and a",
    "start button that needs pressing after power returns stay in series (hardware/SAFETY.md); the relay",
    "is never the only safety stop.",
    "",
    "**The Pi loses power or reboots** (a new boot id): the relay dropped with the Pi. At the next start",
    "the agent asks the monitor: if the machine is mid-job, the session carries on (timed across the gap",
    "by the wall clock); if not, it is reported ended at its last alive mark (`power_loss_recovered`,",
    "with the `ts` and `unlocked_s` of that mark) and the relay opens. While a session is open the agent",
    "marks it alive every 10 s, so a power loss costs at most 10 s of the session's hours. A session",
    "left by an agent that kept it in `state.json` (older versions) is taken over once and treated as",
    "after a power loss.",
    "",
    "**SD-card write budget.** One alive mark is one SQLite transaction (WAL mode, `synchronous=FULL`):",
    "one 4 KiB page appended to `outbox.sqlite-wal` and one fsync, measured as about 8 KiB at the block",
    "layer with the file system's own journal; a checkpoint writes the page back once per 1000 marks.",
    "Marks are written only while a session is open: 360 an hour, at most 8,640 a day (about 70 MB) on a",
    "machine unlocked around the clock, about 3,600 a day (30 MB) in a 10-hour lab day. Each tap in or",
    "out and each job start or end adds one transaction more. Even if each small synced write wore the",
    "flash 30 times its size (cheap cards; endurance cards do far better), 70 MB a day would take decades",
    "to wear out a 32 GB card rated for 500 erase cycles. Use an endurance or industrial card all the",
    "same: the latency of synced writes matters too (README.md, agent resources).",
    "",
)


def _monitor_docs() -> list[str]:
    """MONITOR_DOCS with each monitor plug-in's own paragraph where the backends are listed."""
    from device_agent.hardware.plugins import plugins

    lines: list[str] = []
    for line in MONITOR_DOCS:
        if line == PLUGIN_DOCS_HERE:
            for found in plugins("monitor"):
                lines += found.docs
        else:
            lines.append(line)
    return lines


SWITCH_DOCS: tuple[str, ...] = (
    "## Power switches and smart plugs",
    "",
    "`[switch] backend` says what switches the machine's power:",
    "",
    "- `gpio` (the default): a relay board on `[relay] pin`. No read-back: the pin is what the agent drives.",
    "- `shelly`: a Shelly Gen2+ plug or relay with a meter (Plus Plug S, Plus 1PM, Pro 1PM) over its",
    "  local RPC API: `Switch.Set` to switch, `Switch.GetStatus` to read back `output`, `apower` (W) and",
    "  `aenergy.total` (Wh). With a password set on the device, HTTP digest login as `admin`.",
    "- `tasmota`: a plug running Tasmota over its HTTP commands: `Power On`/`Power Off` (`Power<n>` with",
    "  `channel`), read back with `Power`, the meter with `Status 8` (`Power` in W, `Total` in kWh).",
    "  Payloads as documented by Shelly for Gen2+ firmware 1.x and by Tasmota for releases 12 to 14.",
    "",
    "A smart plug is asked in a thread of its own: a tap never waits for the network. Every switch is read",
    "back; a plug that has not confirmed the new state within `confirm_s` (1 s) is a `fault`",
    "(`switch_unconfirmed`; `switch_unreachable` when it does not answer, `switch_auth_rejected` for a wrong",
    "password): the machine shows as `fault` and the red LED blinks, and the agent keeps switching with",
    "back-off until the plug obeys. Between switches the plug is read every `poll_s`: found in the wrong",
    "state (it rebooted, or someone pressed its button) it is switched back and reported once",
    "(`switch_state_changed`). `power_w` and `energy_wh` in telemetry come from the plug.",
    "",
    "The safety rules stay as they are: never off mid-job (a lock waits while the monitor says the machine",
    'works; with `[monitor] backend = "power"` that is the plug\'s own watts above `threshold_w`), and the',
    "plug is one more stop, never the only one. Set each plug so that it comes back OFF after a power cut",
    "or a reboot: the agent switches it on again only while a session runs.",
    "",
    '- Shelly: `curl -u admin:PASSWORD --digest \'http://PLUG/rpc/Switch.SetConfig?id=0&config={"initial_state":"off"}\'`',
    "  (or in its web page: Output → Power-on default: Off). Also switch off the plug's cloud and Bluetooth",
    "  if unused, and set a password (Settings → Authentication).",
    "- Tasmota: `http://PLUG/cm?user=admin&password=PASSWORD&cmnd=PowerOnState%200` (0: off at power-up),",
    "  and a web password (`WebPassword`). Keep the plug's button for emergencies only: the agent turns a",
    "  plug switched on by its button OFF again while no session runs.",
    "",
    "Stopping the agent with a session open leaves the plug ON (as the relay stays closed); the next start",
    "takes it over without switching it, and carries the session on or reports it as for the relay.",
    "A certified plug needs no mains wiring on the Pi's side (hardware/SAFETY.md): plug the machine into it.",
    "",
    "A monitor or power switch backend is one module in `device_agent/hardware/` with a `PLUGINS` tuple",
    "(`device_agent/hardware/plugins.py`): its config keys (with docs and checks), its cross-key checks,",
    "its fault codes, this reference's paragraph and its factory.",
    "",
)


def render_docs() -> str:
    """The Markdown reference of every key (firmware_config/agent-config.md)."""
    from device_agent.hardware import reader_backends
    from device_agent.hardware.gpio import INDICATOR_PATTERNS

    lines = [
        "# Device agent configuration",
        "",
        "<!-- Generated by `python -m device_agent.config --docs` (device_agent/config/reference.py);"
        " do not edit -->",
        "",
        "The agent reads one TOML file (`werkbank-agent --config FILE`). It checks every key at start and",
        "lists all problems at once; unknown keys are errors, so a typo never goes unnoticed.",
        "Relative paths are taken from the folder of the config file.",
        "`status.config` carries a hash of the checked config (secrets left out), so the server shows",
        "which config a device runs. An example: `firmware_config/examples/simulated-printer.toml`.",
    ]
    sections: dict[str, list[Key]] = {}
    for key in SCHEMA:  # a plug-in's keys join their section's table
        sections.setdefault(key.section, []).append(key)
    for section, keys in sections.items():
        lines += ["", f"## [{section}]", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{k.name}` | {_TYPE_NAMES[k.type]} | {_default_text(k)} | {k.doc} |" for k in keys]
    lines += [
        "",
        "`password` and `password_file` are secrets: keep the file readable by the agent's user only.",
        "",
    ]
    lines += ["## Reader backends", ""]
    lines += [f"- `{name}`" for name in reader_backends()]
    lines += [
        "",
        "A backend is one module in `device_agent/hardware/` with a `create_reader(config)` function.",
        "",
        *_monitor_docs(),
        *SWITCH_DOCS,
        "## What the lights and the buzzer mean",
        "",
        "| state | pattern |",
        "|---|---|",
    ]
    lines += [f"| {state} | {pattern} |" for state, pattern in INDICATOR_PATTERNS]
    lines.append("")
    return "\n".join(lines)
