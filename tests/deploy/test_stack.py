"""The production stack of deploy/ started as shipped, on loopback, and used through a browser.

Only ports and paths change: Mosquitto runs werkbank.conf in a Debian layout (TLS device listener
with a CA from make-certs.sh, password file, ACL); web (gunicorn, several workers), bridge and
scheduler run the ExecStart lines of deploy/systemd/*.service with the settings of
deploy/werkbank.env.example; nginx runs deploy/nginx-werkbank.conf with TLS in front of gunicorn; the
Pi's agent starts from the bundle `werkbank device provision` writes, over mqtts, with a simulated
reader. A trainer logs in over https in Chromium, a badge is tapped at the agent and the page shows
the session. The database is this test's own: PostgreSQL when TEST_DATABASE_URL is set (CI), else
a SQLite file. nginx, Mosquitto and Chromium must be installed: `make test` installs them.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import select

from server.adapters.bridge import wait_until
from server.broker import free_port, wait_for_port
from server.db import Database
from server.models import Machine
from tests.deploy.mosquitto_layout import BRIDGE, DEPLOY, ROOT, ShippedBroker, compose_services, install
from tests.deploy.test_mosquitto_config import DEVICE_PORT, SERVER_PORT, debian_host
from tests.web.test_web_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

UNITS = DEPLOY / "systemd"
MONITORING = DEPLOY / "monitoring"
NGINX = Path("/usr/sbin/nginx")
VENV_BIN = Path(sys.executable).parent
INSTALL_DIR = "/opt/werkbank"  # where the units expect the checkout and its .venv
GUNICORN_PORT = 8000  # as werkbank-web.service and nginx-werkbank.conf have it
QUINN = "04A224B2C35E80"  # qualified on printer-1 (tests/data/lab.yaml)
TRAINER, TRAINER_PASSWORD = "tina@test.local", "trainer-pass"


# -- the shipped files, read as systemd and nginx read them --------------------------------------


def unit_service(name: str) -> dict[str, str]:
    """The [Service] settings of deploy/systemd/NAME (the last one wins, as in systemd)."""
    settings: dict[str, str] = {}
    section = ""
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def command_line(name: str, root: Path, ports: dict[int, int]) -> list[str]:
    """The unit's ExecStart, with the install's venv replaced by this one and its ports by ``ports``."""
    argv = shlex.split(unit_service(name)["ExecStart"])
    assert argv[0].startswith(f"{INSTALL_DIR}/.venv/bin/"), f"{name}: ExecStart is not the install's venv"
    argv[0] = str(VENV_BIN / Path(argv[0]).name)
    assert Path(argv[0]).exists(), f"{name}: {argv[0]} is not installed by `pip install '.[server]'`"
    out = []
    for arg in argv:
        moved = arg.replace("/etc/", f"{root}/etc/")
        for configured, port in ports.items():
            moved = moved.replace(f"127.0.0.1:{configured}", f"127.0.0.1:{port}")
        out.append(moved)
    return out


def env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile reads them (comments and blank lines skipped)."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
    return env


def settings_file(root: Path, values: dict[str, str]) -> Path:
    """deploy/werkbank.env.example with the values an admin fills in (each must be in the example)."""
    text = (DEPLOY / "werkbank.env.example").read_text()
    shipped = env_file(text)
    for key, value in values.items():
        assert key in shipped, f"{key} is not in deploy/werkbank.env.example"
        text = re.sub(rf"^{key}=.*$", lambda _m, k=key, v=value: f"{k}={v}", text, flags=re.M)
    path = root / "etc/werkbank/werkbank.env"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def nginx_conf(root: Path, ports: dict[int, int], certs: Path) -> Path:
    """nginx's main config with deploy/nginx-werkbank.conf as its only site, ports and paths moved."""
    site = (DEPLOY / "nginx-werkbank.conf").read_text()
    for configured in (80, 443):
        ports.setdefault(configured, free_port())
        site = re.sub(rf"listen {configured}\b", f"listen 127.0.0.1:{ports[configured]}", site)
    site = site.replace(f"127.0.0.1:{GUNICORN_PORT}", f"127.0.0.1:{ports[GUNICORN_PORT]}")
    site_path = root / "etc/nginx/sites-enabled/werkbank.conf"
    site_path.parent.mkdir(parents=True)
    site_path.write_text(re.sub(r"(?<=\s)/(etc|opt)/", rf"{root}/\1/", site))
    tls = root / "etc/ssl/werkbank"
    tls.mkdir(parents=True)
    (tls / "fullchain.pem").write_text((certs / "server.crt").read_text() + (certs / "ca.crt").read_text())
    shutil.copy(certs / "server.key", tls / "privkey.pem")
    for folder in ("var/log/nginx", "var/lib/nginx", "run"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    # What Debian's /etc/nginx/nginx.conf sets around its sites, with paths of this test's own.
    main = root / "etc/nginx/nginx.conf"
    main.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"pid {root}/run/nginx.pid;\n"
        + f"error_log {root}/var/log/nginx/error.log;\n"
        + "worker_processes 1;\nevents { worker_connections 256; }\n"
        + "http {\n"
        + "  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n"
        + "  ssl_protocols TLSv1.2 TLSv1.3;\n"
        + f"  access_log {root}/var/log/nginx/access.log;\n"
        + "".join(
            f"  {kind}_temp_path {root}/var/lib/nginx/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  include {site_path};\n"
        + "}\n"
    )
    return main


# -- processes --------------------------------------------------------------------------------------


class Processes:
    """The stack's processes, each logging to its own file; stopped with SIGTERM, as systemd does."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path, stdin: int | None = None
    ) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def report(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)[-3000:]}" for name in self.procs)

    def alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.log(name)}"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def wait_for_log(procs: Processes, name: str, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in procs.log(name):
        procs.alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never logged {text!r}:\n{procs.report()}")
        time.sleep(0.2)


def werkbank(env: dict[str, str], *args: str) -> str:
    """A `werkbank` command as an admin runs it on the host, with the settings file's environment."""
    result = subprocess.run(
        [str(VENV_BIN / "werkbank"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"werkbank {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


# -- the stack -----------------------------------------------------------------------------------------


@pytest.fixture
def open_lab(real_clock_lab: Database) -> Database:
    # Real clocks everywhere: the lab without opening hours (tests/conftest.py).
    return real_clock_lab


def test_stack_as_shipped_serves_a_tap_at_the_agent_to_the_browser_over_https(
    open_lab: Database,
    tmp_path: Path,
    certs: Path,
    passwords: dict[str, str],
    mosquitto_bin: str,
    mosquitto_passwd_bin: str,
) -> None:
    if not NGINX.exists():
        pytest.fail(f"{NGINX} is missing: `apt-get install -y nginx` (`make test` does this).")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (`make test` does this).")
    from playwright.sync_api import expect, sync_playwright

    root = tmp_path / "host"
    # /opt/werkbank is the checkout with its venv (the units' WorkingDirectory, nginx's /static/).
    (root / "opt").mkdir(parents=True)
    (root / INSTALL_DIR.lstrip("/")).symlink_to(ROOT)
    main, broker_ports = debian_host(root, certs, passwords, mosquitto_passwd_bin)
    broker = ShippedBroker(mosquitto_bin, root, main, broker_ports).start()
    ports = {GUNICORN_PORT: free_port()}
    install(certs / "ca.crt", root, "/etc/werkbank/ca.crt", {})
    database_url = open_lab.engine.url.render_as_string(hide_password=False)
    settings = settings_file(
        root,
        {
            "DATABASE_URL": database_url,
            "MQTT_URL": f"mqtt://{BRIDGE}:{passwords[BRIDGE]}@127.0.0.1:{broker.port(SERVER_PORT)}",
            "MQTT_DEVICE_URL": f"mqtts://127.0.0.1:{broker.port(DEVICE_PORT)}",
            "MQTT_CA_FILE": f"{root}/etc/werkbank/ca.crt",
            "SECRET_KEY": os.urandom(32).hex(),
            "WERKBANK_VAR_DIR": f"{root}/var/lib/werkbank",
            "WERKBANK_BRIDGE_METRICS_PORT": str(bridge_metrics := free_port()),
            "WERKBANK_SCHEDULER_METRICS_PORT": str(scheduler_metrics := free_port()),
        },
    )
    (root / "var/lib/werkbank").mkdir(parents=True)
    # A system user's home does not exist (and ProtectSystem=strict makes / read-only anyway).
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(root / "nonexistent"),
    }
    procs = Processes(tmp_path / "logs")
    try:
        server_env: dict[str, str] = {}
        for name in ("werkbank-web.service", "werkbank-bridge.service", "werkbank-scheduler.service"):
            unit = unit_service(name)
            assert unit["EnvironmentFile"] == "/etc/werkbank/werkbank.env", name
            server_env = base_env | env_file(Path(f"{root}{unit['EnvironmentFile']}").read_text())
            cwd = Path(f"{root}{unit['WorkingDirectory']}")
            procs.start(name.removesuffix(".service"), command_line(name, root, ports), server_env, cwd)
        assert settings.exists()
        werkbank(server_env, "db", "upgrade")

        # The Pi: its bundle as provisioning writes it, installed where werkbank-agent.service reads it.
        bundle = tmp_path / "bundle"
        werkbank(
            server_env, "device", "provision", "printer-1", "--reader", "simulated", "--out", str(bundle)
        )
        etc = root / "etc/werkbank"
        for file in ("agent.toml", "mqtt-password", "ca.crt"):
            shutil.copy(bundle / file, etc / file)
        agent_toml = etc / "agent.toml"
        agent_toml.write_text(re.sub(r'(?<=")/', f"{root}/", agent_toml.read_text()))
        with (root / "etc/mosquitto/werkbank.passwd").open("a") as passwd:
            passwd.write((bundle / "mosquitto-passwd-line.txt").read_text())
        broker.reload()
        agent_unit = unit_service("werkbank-agent.service")
        agent_argv = command_line("werkbank-agent.service", root, {})
        assert agent_argv[1:] == ["--config", str(agent_toml)], agent_argv
        agent_cwd = Path(f"{root}{agent_unit['WorkingDirectory']}")
        agent_cwd.mkdir(parents=True)
        agent = procs.start(
            "agent",
            [*agent_argv, "--simulate", "--badges-from-stdin"],
            base_env,
            agent_cwd,
            stdin=subprocess.PIPE,
        )

        nginx_main = nginx_conf(root, ports, certs)
        procs.start(
            "nginx", [str(NGINX), "-p", str(root), "-c", str(nginx_main), "-g", "daemon off;"], base_env, root
        )
        for port in (ports[GUNICORN_PORT], ports[443]):
            wait_for_port("127.0.0.1", port, timeout=30)
        wait_for_log(procs, "werkbank-scheduler", "scheduler running", 30)
        wait_for_log(procs, "agent", "connected to mqtts://", 30)
        procs.alive()

        # Ready through nginx, over TLS checked against the test CA: database, broker, a bridge
        # and the scheduler (their heartbeats).
        tls = ssl.create_default_context(cafile=str(certs / "ca.crt"))

        def ready() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{ports[443]}/readyz", context=tls) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        assert wait_until(lambda: ready()[0] == 200, 20), ready()
        # Plain http is sent to https (on port 443, which this test moved: so no browser here).
        redirect = http.client.HTTPConnection("127.0.0.1", ports[80], timeout=5)
        redirect.request("GET", "/login", headers={"Host": "werkbank.lab"})
        response = redirect.getresponse()
        assert (response.status, response.getheader("Location")) == (301, "https://werkbank.lab/login")
        with open_lab.session() as s:
            printer = s.scalar(select(Machine.id).where(Machine.slug == "printer-1"))
        base = f"https://127.0.0.1:{ports[443]}"
        problems: list[str] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(ignore_https_errors=True, locale="en-US")
                page = context.new_page()
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                page.goto(f"{base}/")
                page.get_by_label("Email").fill(TRAINER)
                page.get_by_label("Password").fill(TRAINER_PASSWORD)
                page.get_by_role("button", name="Log in").click()
                tile = page.locator(f'[data-machine-id="{printer}"]')
                expect(tile).to_have_attribute("data-state", "available", timeout=10_000)

                _tap(agent.stdin, QUINN)
                expect(tile).to_have_attribute("data-state", "in_use", timeout=15_000)
                expect(tile).to_contain_text("Quinn Qualified")  # the trainer reads German: "Belegt von …"
            except BaseException:
                print("--- page", page.url, page.content()[:3000])
                raise
            finally:
                browser.close()
        assert problems == []
        procs.alive()

        # Prometheus: the bridge counted the allowed tap and its latency, the scheduler its job
        # runs, the web (through nginx, from this host) the device online.
        bridge_text = _get(f"http://127.0.0.1:{bridge_metrics}/metrics")
        assert 'werkbank_decisions_total{reason="ok"} 1.0' in bridge_text, bridge_text
        assert "werkbank_decision_seconds_count 1.0" in bridge_text, bridge_text
        assert "werkbank_bridge_connected 1.0" in bridge_text
        scheduler_text = _get(f"http://127.0.0.1:{scheduler_metrics}/metrics")
        assert re.search(r'werkbank_job_runs_total\{job="refresh_usage"\} [1-9]', scheduler_text), (
            scheduler_text
        )
        assert 'werkbank_job_failures_total{job="refresh_usage"} 0.0' in scheduler_text
        web_text = _get(f"https://127.0.0.1:{ports[443]}/metrics", tls)
        assert "werkbank_devices_online 1.0" in web_text, web_text
        # The shipped alert rules and dashboard ask only for metrics these processes export.
        exported = bridge_text + scheduler_text + web_text
        for shipped in (MONITORING / "werkbank-alerts.yaml", MONITORING / "grafana-werkbank.json"):
            names = set(re.findall(r"werkbank_[a-z_]+", shipped.read_text()))
            assert names, shipped
            assert {n for n in names if f"{n} " not in exported and f"{n}{{" not in exported} == set(), (
                shipped
            )
        assert "Traceback" not in procs.log("werkbank-bridge"), procs.log("werkbank-bridge")
    except BaseException:
        print(procs.report(), "\n--- mosquitto\n", broker.log()[-3000:])
        raise
    finally:
        procs.stop()
        broker.stop()


def _get(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, context=context, timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


def _tap(stdin: IO[bytes] | None, uid: str) -> None:
    assert stdin is not None
    stdin.write(f"{uid}\n".encode())
    stdin.flush()


def test_stack_compose_runs_the_units_command_lines() -> None:
    """The compose file and the systemd units start web, bridge and scheduler alike: the same
    program and options; only the install path and the listening address (the container's own
    network) differ."""
    services = compose_services()
    for service, unit in (
        ("web", "werkbank-web"),
        ("bridge", "werkbank-bridge"),
        ("scheduler", "werkbank-scheduler"),
    ):
        argv = shlex.split(unit_service(f"{unit}.service")["ExecStart"])
        argv[0] = Path(argv[0]).name
        expected = [arg.replace("127.0.0.1:", "0.0.0.0:") for arg in argv]
        assert shlex.split(services[service]["command"]) == expected, service


def test_stack_a_second_scheduler_takes_over_within_a_minute_when_the_first_is_killed(
    database_url: str, tmp_path: Path
) -> None:
    """Two hosts run werkbank-scheduler.service; the one holding the lock dies (kill -9): the other
    runs the jobs within a minute, and until then it only waits."""
    root = tmp_path / "host"
    settings = settings_file(root, {"DATABASE_URL": database_url, "WERKBANK_VAR_DIR": f"{root}/var"})
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"} | env_file(
        settings.read_text()
    )
    argv = command_line("werkbank-scheduler.service", root, {})
    procs = Processes(tmp_path / "logs")
    try:
        first = procs.start("first", argv, env, ROOT)
        wait_for_log(procs, "first", "scheduler running", 30)
        procs.start("second", argv, env, ROOT)
        wait_for_log(procs, "second", "another scheduler holds the lock", 30)
        first.kill()
        first.wait(timeout=5)
        killed = time.monotonic()
        del procs.procs["first"]
        wait_for_log(procs, "second", "scheduler running", 60)
        assert time.monotonic() - killed < 60
        assert procs.log("second").count("scheduler running") == 1
    finally:
        procs.stop()
