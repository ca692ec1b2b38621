"""A faithful peer of a Prusa printer's PrusaLink API (v1), run as its own process.

Built from PrusaLink's OpenAPI description (prusa3d/Prusa-Link-Web, ``spec/openapi.yaml``,
"PrusaLink Web" 1.0.0): ``GET /api/v1/status`` → ``{"printer": {"state": IDLE|BUSY|PRINTING|
PAUSED|FINISHED|STOPPED|ERROR|ATTENTION|READY, "temp_nozzle", "target_nozzle", "temp_bed",
"target_bed", "axis_z", "flow", "speed", "fan_hotend", "fan_print"}, "job": {"id", "progress"
(%), "time_remaining", "time_printing"} (only while there is a job), "storage": {…}}``;
``GET /api/v1/job`` → the ``Job`` (``id``, ``state`` PRINTING|PAUSED|FINISHED|STOPPED|ERROR,
``progress``, ``time_printing``, ``time_remaining``, ``file`` with ``name``, ``display_name``,
``path``, ``size``, ``m_timestamp`` and ``meta``: ``estimated_print_time``, ``filament used [mm]``,
``filament used [g]``) or ``204 No Content``; ``PUT /api/v1/job/{id}/pause`` and ``/resume``,
``DELETE /api/v1/job/{id}`` (stop) → 204; ``GET /api/version``. Security: HTTP digest
(``securitySchemes: digestAuth``; user ``maker``, MD5, realm "Printer API") or, as older
firmware, the ``X-Api-Key`` header. A finished or stopped job stays in ``/api/v1/job`` until
the print is taken off the sheet (state back to IDLE), as on a Core One or MK4 (firmware 6.x).

The test drives the printer on stdin, one command a line: ``print FILE SECONDS MM GRAMS``
(started at the printer), ``pause``, ``resume``, ``stop``, ``error``, ``attention``
(filament runout), ``clear`` (the sheet is taken off: IDLE).

    python -m tests.agent.peers.prusalink --port PORT --password PW [--api-key KEY]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REALM = "Printer API"


class Printer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "IDLE"
        self.job: dict[str, Any] | None = None
        self.job_id = 296
        self.plan = (3.0, 300.0, 0.9)
        self.started = 0.0
        self.paused_s = 0.0
        self.paused_at: float | None = None
        self.printing_s = 0.0

    def start(self, name: str, seconds: float, mm: float, grams: float) -> None:
        self.job_id += 1
        self.plan = (seconds, mm, grams)
        self.started = time.monotonic()
        self.paused_s = 0.0
        self.paused_at = None
        self.printing_s = 0.0
        self.state = "PRINTING"
        self.job = {
            "id": self.job_id,
            "state": "PRINTING",
            "progress": 0.0,
            "time_remaining": int(seconds),
            "time_printing": 0,
            "inaccurate_estimates": False,
            "file": {
                "name": name[:8].upper() + "~1.BGC",
                "display_name": name,
                "path": "/usb",
                "display_path": "/USB",
                "size": 2393142,
                "m_timestamp": 1716383105,
                "type": "PRINT_FILE",
                "read_only": False,
                "meta": {
                    "estimated_print_time": int(seconds),
                    "filament used [mm]": mm,
                    "filament used [g]": grams,
                    "filament_type": "PETG",
                    "temperature": 230,
                    "bed_temperature": 85,
                },
                "refs": {"download": f"/usb/{name}", "icon": None, "thumbnail": None},
            },
        }

    def tick(self) -> None:
        if self.job is None or self.state not in ("PRINTING", "PAUSED", "ATTENTION"):
            return
        now = time.monotonic()
        paused = self.paused_s + (now - self.paused_at if self.paused_at is not None else 0.0)
        self.printing_s = max(now - self.started - paused, 0.0)
        seconds = self.plan[0]
        progress = min(self.printing_s / seconds * 100, 100.0)
        self.job.update(
            progress=round(progress, 1),
            time_printing=int(now - self.started),
            time_remaining=max(int(seconds - self.printing_s), 0),
        )
        if progress >= 100 and self.state == "PRINTING":
            self.end("FINISHED")

    def end(self, state: str) -> None:
        if self.job is None:
            return
        self.state = state
        self.job["state"] = state

    def hold(self, state: str) -> None:
        if self.state == "PRINTING":
            self.tick()
            self.paused_at = time.monotonic()
            self.state = state
            assert self.job is not None
            self.job["state"] = "PAUSED"

    def resume(self) -> None:
        if self.state in ("PAUSED", "ATTENTION") and self.paused_at is not None:
            self.paused_s += time.monotonic() - self.paused_at
            self.paused_at = None
            self.state = "PRINTING"
            assert self.job is not None
            self.job["state"] = "PRINTING"

    def status(self) -> dict[str, Any]:
        self.tick()
        heating = self.state in ("PRINTING", "PAUSED", "ATTENTION")
        body: dict[str, Any] = {
            "storage": {"path": "/usb/", "name": "usb", "read_only": False},
            "printer": {
                "state": self.state,
                "temp_nozzle": 229.6 if heating else 24.1,
                "target_nozzle": 230.0 if heating else 0.0,
                "temp_bed": 84.9 if heating else 23.8,
                "target_bed": 85.0 if heating else 0.0,
                "axis_z": 2.4,
                "flow": 100,
                "speed": 100,
                "fan_hotend": 5200 if heating else 0,
                "fan_print": 3100 if heating else 0,
            },
        }
        if self.job is not None:
            body["job"] = {k: self.job[k] for k in ("id", "progress", "time_remaining", "time_printing")}
        return body


class Handler(BaseHTTPRequestHandler):
    server: PeerServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self, method: str) -> bool:
        server = self.server
        key = self.headers.get("X-Api-Key")
        if key is not None:
            return server.api_key is not None and secrets.compare_digest(key, server.api_key)
        header = self.headers.get("Authorization") or ""
        if not header.startswith("Digest "):
            return False
        fields: dict[str, str] = {}
        for part in header[len("Digest ") :].split(","):
            name, _, value = part.strip().partition("=")
            fields[name] = value.strip('"')
        if fields.get("username") != "maker" or fields.get("nonce") not in server.nonces:
            return False

        def h(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        ha1 = h(f"maker:{REALM}:{server.password}")
        ha2 = h(f"{method}:{fields.get('uri', '')}")
        expected = h(f"{ha1}:{fields['nonce']}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}")
        return secrets.compare_digest(expected, fields.get("response", ""))

    def _route(self, method: str) -> None:
        server = self.server
        if not self._authorized(method):
            nonce = secrets.token_hex(8)
            server.nonces.add(nonce)
            self._send(
                401,
                {"code": 401, "title": "Unauthorized", "text": "You must be logged in"},
                {"WWW-Authenticate": f'Digest realm="{REALM}", nonce="{nonce}", qop="auth"'},
            )
            return
        printer = server.printer
        path = self.path.split("?")[0]
        with printer.lock:
            if method == "GET" and path == "/api/v1/status":
                self._send(200, printer.status())
            elif method == "GET" and path == "/api/v1/job":
                printer.tick()
                if printer.job is None:
                    self._send(204)
                else:
                    self._send(200, printer.job)
            elif method == "GET" and path == "/api/version":
                self._send(
                    200,
                    {
                        "api": "2.0.0",
                        "server": "2.1.2",
                        "nozzle_diameter": 0.4,
                        "text": "PrusaLink",
                        "hostname": "prusa-mk4",
                        "capabilities": {"upload-by-put": True},
                    },
                )
            elif path.startswith("/api/v1/job/"):
                self._job_command(method, path[len("/api/v1/job/") :])
            else:
                self._send(404, {"code": 404, "title": "Not Found", "text": path})

    def _job_command(self, method: str, rest: str) -> None:
        printer = self.server.printer
        job_id, _, action = rest.partition("/")
        if printer.job is None or job_id != str(printer.job["id"]):
            self._send(404, {"code": 404, "title": "Not Found", "text": "Job not found"})
            return
        if method == "DELETE" and not action:
            printer.tick()
            printer.end("STOPPED")
        elif method == "PUT" and action == "pause":
            printer.hold("PAUSED")
        elif method == "PUT" and action == "resume":
            printer.resume()
        else:
            self._send(405, {"code": 405, "title": "Method Not Allowed", "text": method})
            return
        self._send(204)

    def do_GET(self) -> None:
        self._route("GET")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")


class PeerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, password: str, api_key: str | None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.printer = Printer()
        self.password = password
        self.api_key = api_key
        self.nonces: set[str] = set()


def control(printer: Printer) -> None:
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        with printer.lock:
            if words[0] == "print":
                printer.start(words[1], float(words[2]), float(words[3]), float(words[4]))
            elif words[0] == "pause":
                printer.hold("PAUSED")
            elif words[0] == "attention":
                printer.hold("ATTENTION")
            elif words[0] == "resume":
                printer.resume()
            elif words[0] in ("stop", "error"):
                printer.tick()
                printer.end("STOPPED" if words[0] == "stop" else "ERROR")
            elif words[0] == "clear":
                printer.job = None
                printer.state = "IDLE"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)
    server = PeerServer(args.port, args.password, args.api_key)
    threading.Thread(target=control, args=(server.printer,), daemon=True).start()
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
