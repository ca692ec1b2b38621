"""The Pi install, proven as far as this machine can: ``make pi-check``.

A Debian 12 arm64 root (Raspberry Pi OS's base) runs under qemu-user-static (tests/pi/pi-root.sh).
This script provisions a device with ``werkbank device provision`` as an admin would, runs the
bundle's INSTALL.md inside that root (step 1 on the broker host, a real Mosquitto with the shipped
config), checks the bundle's agent.toml with the agent's own config check, then starts the
agent as its systemd unit would, with simulated hardware, against the broker over TLS with the
bundle's credentials, and waits for its status message on the broker. At the end it prints the
time each part took and every Python package pip had to compile on arm64.

The base root is built once (debootstrap) and kept in ``--cache`` (default var/pi-check); every
run copies it, so each run installs onto a fresh system. Exit code 0 only when everything held;
the logs of each step stay in ``CACHE/logs/``. docs/deploy.md, "Raspberry Pi install, proven
under emulation", has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.deploy.mosquitto_layout import BRIDGE, ROOT, ShippedBroker, make_certs
from tests.deploy.test_mosquitto_config import DEVICE_PORT, SERVER_PORT, debian_host
from tests.pi.install_steps import BROKER_STEP, Command, parse
from werkbank_protocol.messages import Status, decode_as
from werkbank_protocol.mqtt import BrokerAddress, make_client

PI_ROOT = Path(__file__).with_name("pi-root.sh")
VENV_BIN = Path(sys.executable).parent
MACHINE = "printer-1"  # tests/data/lab.yaml
LAB = ROOT / "tests" / "data" / "lab.yaml"
BROKER_HOST = "werkbank.lab"  # the name the Pis use; the emulated Pi's /etc/hosts points it here
ADMIN_HOME = "/home/admin"  # where the admin copied the bundle to (scp -r)
AGENT_START_TIMEOUT = 300.0  # seconds; Python under qemu imports slowly, on a busy machine slower
PIP_BUILD = re.compile(r"(?:Building wheel for|Running setup\.py install for) ([A-Za-z0-9_.\-]+)")
SDIST = re.compile(r"Downloading ([A-Za-z0-9_.\-]+?)-[0-9][^ /]*\.(?:tar\.gz|zip)\b")
PROOT_FALLS_SHORT = (
    "binfmt_misc cannot be mounted or written here, so arm64 programs could only run through proot; "
    "Debian 12's proot (5.1) does not translate the paths of the statx system call that qemu passes "
    "on, so `ls FILE` in INSTALL.md step 6 fails there. Run the check as root where "
    "/proc/sys/fs/binfmt_misc can be mounted (a VM, or a container with --privileged); "
    "PI_MODE=proot tries the proot path anyway (it builds the root and gets through step 5)."
)


class CheckFailed(Exception):
    pass


class Timer:
    def __init__(self) -> None:
        self.parts: list[tuple[str, float]] = []

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        print(f"pi-check: {name} ...", flush=True)
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.parts.append((name, took))
            print(f"pi-check: {name}: {took:.0f} s", flush=True)


def sh(argv: list[str], log: Path | None = None, timeout: float = 3600, **kwargs: Any) -> str:
    """Run ``argv``; its output goes to ``log`` as it comes (and is returned). A failure names the log."""
    if log is None:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, errors="replace", **kwargs
        )
        output, returncode = result.stdout + result.stderr, result.returncode
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            returncode = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False, **kwargs
            ).returncode
        output = log.read_text(errors="replace")
    if returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        where = f" (whole output: {log})" if log else ""
        raise CheckFailed(f"{shlex.join(argv)} exited {returncode}{where}:\n{tail}")
    return output


def in_pi(root: Path, script: str, log: Path, timeout: float = 3600) -> str:
    """Run a bash ``script`` as root inside the emulated Pi."""
    return sh([str(PI_ROOT), "run", str(root), "/bin/bash", "-c", script], log, timeout)


# -- the broker host ---------------------------------------------------------------------------------


def mosquitto_binaries() -> tuple[str, str]:
    sh(["make", "-s", "mosquitto"], cwd=ROOT)
    broker = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    return broker, passwd


def werkbank(env: dict[str, str], *args: str) -> str:
    return sh([str(VENV_BIN / "werkbank"), *args], env=env, cwd=ROOT, timeout=300)


def broker_step(commands: list[Command], bundle: Path, broker: ShippedBroker, log: Path) -> None:
    """INSTALL.md step 1 on the broker host: its commands with the host's /etc under the broker's root and
    ``systemctl reload mosquitto`` as the SIGHUP it sends (no systemd here), as root without sudo."""
    assert broker.proc is not None
    lines = []
    for command in commands:
        line = command.line
        line = re.sub(r"\bsudo\s+", "", line)
        line = line.replace("/etc/mosquitto/", f"{broker.root}/etc/mosquitto/")
        line = line.replace("systemctl reload mosquitto", f"kill -HUP {broker.proc.pid}")
        lines.append(line)
    sh(["bash", "-euxc", "\n".join(lines)], log, cwd=bundle)
    time.sleep(0.5)  # Mosquitto re-reads its files in its main loop


class StatusWatch:
    """The server's account on the broker's loopback listener, subscribed to the device's status."""

    def __init__(self, port: int, password: str, device_id: str) -> None:
        self.messages: queue.Queue[bytes] = queue.Queue()
        address = BrokerAddress("127.0.0.1", port, BRIDGE, password)
        self.client = make_client("werkbank-pi-check", address, clean_session=True)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(bytes(msg.payload))
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.subscribe(f"werkbank/v1/dev/{device_id}/status", 1)
        self.client.loop_start()

    def wait(self, online: bool, timeout: float, alive: Any) -> Status:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive()
            try:
                status = decode_as(Status, self.messages.get(timeout=1))
            except queue.Empty:
                continue
            if status.online == online:
                return status
        raise CheckFailed(f"no status with online={online} from the agent within {timeout:.0f} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def trust_hosts_pip_ca(root: Path) -> None:
    """Where this machine's pip trusts an extra CA (a TLS-inspecting proxy on the way to PyPI), the
    emulated Pi's pip must too, or it reaches no package: the same CA file, named in its
    /etc/pip.conf. A Pi whose network does not inspect TLS needs neither."""
    cert = os.environ.get("PIP_CERT")
    if not cert:
        found = subprocess.run(
            [str(VENV_BIN / "pip"), "config", "get", "global.cert"],
            capture_output=True,
            text=True,
            check=False,
        )
        cert = found.stdout.strip() if found.returncode == 0 else ""
    if not cert or not Path(cert).is_file():
        return
    shutil.copy(cert, root / "etc/ssl/certs/pi-check-host-ca.crt")
    (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/pi-check-host-ca.crt\n")


# -- the run ----------------------------------------------------------------------------------------


def unit_settings(unit: str) -> dict[str, str]:
    settings = {}
    for line in unit.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings[key.strip()] = value.strip()
    return settings


def compiled_packages(pip_log: str) -> tuple[list[str], list[str]]:
    """(packages pip built from source, source archives it downloaded), from pip's output."""
    built = sorted({name.lower() for name in PIP_BUILD.findall(pip_log)})
    sdists = sorted({name.lower() for name in SDIST.findall(pip_log)})
    return built, sdists


def run_check(cache: Path, timer: Timer) -> dict[str, Any]:
    logs = cache / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)

    mode = sh([str(PI_ROOT), "mode"]).strip()
    if mode == "proot" and os.environ.get("PI_MODE") != "proot":
        raise CheckFailed(PROOT_FALLS_SHORT)
    with timer.part("base root (debootstrap, or the cached one)"):
        base = Path(sh([str(PI_ROOT), "base", str(cache)], logs / "base.log").strip().splitlines()[-1])
    print(f"pi-check: base root {base}, arm64 programs run through {mode}", flush=True)

    root = cache / "pi"
    with timer.part("fresh copy of the base root"):
        shutil.rmtree(root, ignore_errors=True)
        sh(["cp", "-a", str(base), str(root)])

    host = cache / "host"
    shutil.rmtree(host, ignore_errors=True)
    host.mkdir()
    with timer.part("broker and provisioning on the host"):
        broker_bin, passwd_bin = mosquitto_binaries()
        certs = make_certs(host / "certs", BROKER_HOST)
        bridge_password = "pi-check-" + os.urandom(12).hex()
        main_conf, ports = debian_host(host / "broker", certs, {BRIDGE: bridge_password}, passwd_bin)
        broker = ShippedBroker(broker_bin, host / "broker", main_conf, ports).start()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(host),
            "DATABASE_URL": f"sqlite:///{host / 'werkbank.db'}",
            "SECRET_KEY": "pi-check",
            "WERKBANK_VAR_DIR": str(host / "var"),
        }
        werkbank(env, "db", "upgrade")
        werkbank(env, "load", str(LAB))
        bundle = host / f"bundle-{MACHINE}"
        device_url = f"mqtts://{BROKER_HOST}:{broker.port(DEVICE_PORT)}"
        out = werkbank(
            env,
            "device",
            "provision",
            MACHINE,
            "--mqtt-url",
            device_url,
            "--ca-file",
            str(certs / "ca.crt"),
            "--out",
            str(bundle),
        )
        device_id = out.split()[0]
        # INSTALL.md step 6: the wheel, built on the server from its checkout, next to the bundle's files.
        sh(
            [str(VENV_BIN / "pip"), "wheel", "-q", "--no-deps", "-w", str(host / "dist"), str(ROOT)],
            logs / "wheel.log",
            timeout=600,
        )
        (wheel,) = (host / "dist").glob("werkbank-*.whl")
        shutil.copy(wheel, bundle / wheel.name)

    try:
        commands = parse((bundle / "INSTALL.md").read_text(encoding="utf-8"))
        with timer.part("step 1 on the broker host"):
            broker_step([c for c in commands if c.step == BROKER_STEP], bundle, broker, logs / "step-1.log")

        # The admin's copy of the bundle on the Pi (scp -r), and the lab's name for the broker.
        pi_bundle = f"{ADMIN_HOME}/{bundle.name}"
        shutil.copytree(bundle, root / pi_bundle.lstrip("/"))
        with (root / "etc/hosts").open("a") as hosts:
            # Its own name, as Raspberry Pi OS has it (sudo asks), and the broker's in the lab.
            hosts.write(f"127.0.1.1\t{socket.gethostname()}\n127.0.0.1\t{BROKER_HOST}\n")
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        trust_hosts_pip_ca(root)

        skipped = []
        pip_log = ""
        for step in sorted({c.step for c in commands} - {BROKER_STEP}):
            todo = [c for c in commands if c.step == step]
            run = [c.line for c in todo if c.skip_reason() is None]
            skipped += [(c.step, c.line, c.skip_reason()) for c in todo if c.skip_reason() is not None]
            if not run:
                continue
            title = todo[0].title
            with timer.part(f"step {step}: {title}"):
                script = "set -eux\ncd " + shlex.quote(pi_bundle) + "\n" + "\n".join(run) + "\n"
                output = in_pi(root, script, logs / f"step-{step}.log")
            if "pip install" in "\n".join(run):
                pip_log += output
        for step, line, reason in skipped:
            print(f"pi-check: step {step}: not run under emulation: {line}  ({reason})", flush=True)

        # What the agent's config check said in step 7 (run as werkbank-agent, as INSTALL.md has it).
        step7 = (logs / "step-7.log").read_text()
        found = re.search(r"agent\.toml: ok \(config hash (\S+)\)", step7)
        if found is None:
            raise CheckFailed(
                f"the config check in step 7 did not print 'ok (config hash …)': {logs}/step-7.log"
            )
        config_hash = found.group(1)
        boot = (root / "boot/firmware/config.txt").read_text()
        if "dtparam=spi=on" not in boot:
            raise CheckFailed("step 3 did not append the SPI line to /boot/firmware/config.txt")

        with timer.part("simulated start against the broker (TLS, the bundle's password)"):
            status = start_agent(root, bundle, host, broker, bridge_password, device_id, logs)
        # --simulate swaps the reader and the pin factory, so the running config's hash is not the
        # checked file's: the status must carry the one the agent logged at its start.
        started = re.search(r"started \(config (\S+),", (logs / "agent.log").read_text())
        if started is None or status.config != started.group(1) or status.machine != MACHINE:
            raise CheckFailed(f"the status is not this agent's: {status}")
        built, sdists = compiled_packages(pip_log)
        return {
            "mode": mode,
            "device": device_id,
            "config_hash": config_hash,
            "simulated_config_hash": status.config,
            "status": {"online": status.online, "machine": status.machine, "fw": status.fw},
            "compiled_on_arm64": built,
            "source_archives": sdists,
            "not_run": [{"step": s, "command": line, "why": why} for s, line, why in skipped],
        }
    finally:
        broker.stop()


def start_agent(
    root: Path,
    bundle: Path,
    host: Path,
    broker: ShippedBroker,
    bridge_password: str,
    device_id: str,
    logs: Path,
) -> Status:
    """The unit's ExecStart with --simulate, as its User in its WorkingDirectory; its status on the broker."""
    unit = unit_settings((bundle / "werkbank-agent.service").read_text())
    command = f"{unit['ExecStart']} --simulate"
    script = (
        f"cd {shlex.quote(unit['WorkingDirectory'])} && "
        f"exec sudo -u {shlex.quote(unit['User'])} -g {shlex.quote(unit['Group'])} {command}"
    )
    watch = StatusWatch(broker.port(SERVER_PORT), bridge_password, device_id)
    log_path = logs / "agent.log"
    with log_path.open("w") as log:
        agent = subprocess.Popen(
            [str(PI_ROOT), "run", str(root), "/bin/bash", "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped below by that id
        )

    def alive() -> None:
        if agent.poll() is not None:
            raise CheckFailed(f"the agent exited with {agent.returncode}:\n{log_path.read_text()[-3000:]}")

    try:
        status = watch.wait(True, AGENT_START_TIMEOUT, alive)
        text = log_path.read_text()
        for needed in (
            f"agent {device_id} for machine {MACHINE} started",
            f"connected to mqtts://{BROKER_HOST}",
        ):
            if needed not in text:
                raise CheckFailed(f"the agent's log lacks {needed!r}:\n{text[-3000:]}")
        if "Not authorized" in text:
            raise CheckFailed(f"the broker refused the bundle's password:\n{text[-3000:]}")
        # Stopped as systemd stops it (SIGTERM): it says goodbye with an offline status.
        os.killpg(agent.pid, signal.SIGTERM)
        watch.wait(False, 60, lambda: None)
        agent.wait(timeout=60)
        return status
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(timeout=30)
        watch.close()
        print(f"pi-check: agent log: {log_path}\n{log_path.read_text()[-1500:]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pi.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "pi-check", help="default: var/pi-check")
    args = parser.parse_args(argv)
    cache: Path = args.cache.resolve()
    # `timeout` (make pi-check) stops this process with SIGTERM: leave through the finally blocks,
    # which stop the agent (a process group of its own) and the broker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    timer = Timer()
    started = time.monotonic()
    print(f"pi-check: load {Path('/proc/loadavg').read_text().strip()}", flush=True)
    try:
        report = run_check(cache, timer)
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        print(f"pi-check: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    total = time.monotonic() - started
    report["seconds"] = {name: round(took) for name, took in timer.parts} | {"total": round(total)}
    report["load_after"] = Path("/proc/loadavg").read_text().strip()
    (cache / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print("pi-check: times")
    for name, took in timer.parts:
        print(f"  {took:7.0f} s  {name}")
    print(f"  {total:7.0f} s  total (load now {report['load_after']})")
    built = ", ".join(report["compiled_on_arm64"]) or "none"
    print(f"pi-check: compiled from source on arm64 (pip): {built}")
    print(f"pi-check: source archives pip downloaded: {', '.join(report['source_archives']) or 'none'}")
    print(
        f"pi-check: ok: {report['device']} installed on Debian 12 arm64 ({report['mode']}), "
        f"config hash {report['config_hash']}, online on the broker"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
