"""A faithful peer of Klipper's host process (klippy) for a real Moonraker to talk to.

Moonraker (installed from PyPI in its own virtualenv) runs unchanged; only the printer behind
it is simulated, at the lowest level Moonraker knows: Klipper's API server on a Unix socket
(Klipper docs, "API server": JSON objects each ended by 0x03; requests ``{"id", "method",
"params"}``, answers ``{"id", "result"}`` or ``{"id", "error"}``; subscriptions pushed as
``{"method": <response_template method>, "params": {"eventtime", "status"}}`` with only what
changed). Endpoints: ``info``, ``list_endpoints``, ``objects/list``, ``objects/query``,
``objects/subscribe``, ``gcode/script`` (``SDCARD_PRINT_FILE``, ``CANCEL_PRINT``),
``gcode/subscribe_output``, ``register_remote_method``, ``pause_resume/*``, ``emergency_stop``.
Object fields as Klipper v0.12 reports them: ``print_stats`` (``filename``,
``total_duration``, ``print_duration``, ``filament_used`` (mm), ``state``: standby,
printing, paused, complete, cancelled, error; ``message``, ``info``), ``virtual_sdcard``,
``display_status``, ``extruder`` and ``heater_bed`` (``temperature``, ``target``, ``power``),
``webhooks``, ``pause_resume``, ``idle_timeout``, ``configfile``, ``heaters``.

A print runs in simulated time: ``plan SECONDS MM`` says how long the next print takes and
how much filament it uses. The test drives the printer on stdin, one command a line:
``print FILE [SECONDS MM]`` (started at the printer's display), ``pause``, ``resume``,
``cancel``, ``error MESSAGE`` (Klipper shuts down mid-print), ``plan SECONDS MM``.

    python -m tests.agent.peers.klippy --socket PATH --gcodes DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

ENDPOINTS = [
    "info",
    "emergency_stop",
    "register_remote_method",
    "list_endpoints",
    "objects/list",
    "objects/query",
    "objects/subscribe",
    "gcode/script",
    "gcode/help",
    "gcode/restart",
    "gcode/firmware_restart",
    "gcode/subscribe_output",
    "pause_resume/pause",
    "pause_resume/resume",
    "pause_resume/cancel",
]


class Printer:
    def __init__(self, gcodes: str) -> None:
        self.gcodes = gcodes
        self.plan = (3.0, 300.0)  # seconds, filament mm of the next print
        self.started = 0.0
        self.paused_at: float | None = None
        self.paused_s = 0.0
        self.objects: dict[str, dict[str, Any]] = {
            "webhooks": {"state": "ready", "state_message": "Printer is ready"},
            "configfile": {"config": {"virtual_sdcard": {"path": gcodes}}, "settings": {}},
            "print_stats": {
                "filename": "",
                "total_duration": 0.0,
                "print_duration": 0.0,
                "filament_used": 0.0,
                "state": "standby",
                "message": "",
                "info": {"total_layer": None, "current_layer": None},
            },
            "virtual_sdcard": {
                "file_path": None,
                "progress": 0.0,
                "is_active": False,
                "file_position": 0,
                "file_size": 0,
            },
            "display_status": {"progress": 0.0, "message": None},
            "pause_resume": {"is_paused": False},
            "idle_timeout": {"state": "Idle", "printing_time": 0.0},
            "extruder": {"temperature": 23.5, "target": 0.0, "power": 0.0, "can_extrude": False},
            "heater_bed": {"temperature": 22.8, "target": 0.0, "power": 0.0},
            "toolhead": {"homed_axes": "", "print_time": 0.0, "estimated_print_time": 0.0},
            "heaters": {
                "available_heaters": ["heater_bed", "extruder"],
                "available_sensors": ["heater_bed", "extruder"],
                "available_monitors": [],
            },
        }
        # Subscribers: (writer, method, {object: fields or None}); a copy of what each last saw.
        self.subscribers: list[tuple[asyncio.StreamWriter, str, dict[str, Any]]] = []
        self.sent: dict[int, dict[str, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ printing

    def start(self, filename: str, plan: tuple[float, float] | None = None) -> str | None:
        stats = self.objects["print_stats"]
        if stats["state"] in ("printing", "paused"):
            return "Print already in progress"
        if plan is not None:
            self.plan = plan
        self.started = time.monotonic()
        self.paused_s = 0.0
        self.paused_at = None
        path = os.path.join(self.gcodes, filename)
        stats.update(
            filename=filename,
            total_duration=0.0,
            print_duration=0.0,
            filament_used=0.0,
            state="printing",
            message="",
            info={"total_layer": 40, "current_layer": 0},
        )
        self.objects["virtual_sdcard"].update(
            file_path=path, progress=0.0, is_active=True, file_position=0, file_size=120000
        )
        self.objects["idle_timeout"]["state"] = "Printing"
        self.objects["extruder"].update(target=210.0, temperature=209.4, power=0.42, can_extrude=True)
        self.objects["heater_bed"].update(target=60.0, temperature=59.8, power=0.31)
        return None

    def finish(self, state: str, message: str = "", measure: bool = True) -> None:
        if measure:
            self.tick()
        self.objects["print_stats"].update(state=state, message=message)
        self.objects["virtual_sdcard"].update(is_active=False)
        self.objects["idle_timeout"]["state"] = "Ready"
        self.objects["extruder"].update(target=0.0, power=0.0)
        self.objects["heater_bed"].update(target=0.0, power=0.0)
        if state == "complete":
            self.objects["virtual_sdcard"].update(progress=1.0)
            self.objects["display_status"]["progress"] = 1.0
        if state == "error":
            self.objects["webhooks"].update(state="shutdown", state_message=message)

    def tick(self) -> None:
        stats = self.objects["print_stats"]
        if stats["state"] not in ("printing", "paused"):
            return
        now = time.monotonic()
        paused = self.paused_s + (now - self.paused_at if self.paused_at is not None else 0.0)
        total = now - self.started
        printing = max(total - paused, 0.0)
        seconds, mm = self.plan
        done = min(printing / seconds, 1.0)
        stats.update(
            total_duration=round(total, 3),
            print_duration=round(printing, 3),
            filament_used=round(mm * done, 2),
            info={"total_layer": 40, "current_layer": int(40 * done)},
        )
        sdcard = self.objects["virtual_sdcard"]
        sdcard.update(progress=round(done, 4), file_position=int(120000 * done))
        self.objects["display_status"]["progress"] = round(done, 4)
        if done >= 1.0 and stats["state"] == "printing":
            self.finish("complete", measure=False)

    def pause(self) -> None:
        if self.objects["print_stats"]["state"] == "printing":
            self.tick()
            self.paused_at = time.monotonic()
            self.objects["print_stats"]["state"] = "paused"
            self.objects["pause_resume"]["is_paused"] = True

    def resume(self) -> None:
        if self.objects["print_stats"]["state"] == "paused" and self.paused_at is not None:
            self.paused_s += time.monotonic() - self.paused_at
            self.paused_at = None
            self.objects["print_stats"]["state"] = "printing"
            self.objects["pause_resume"]["is_paused"] = False

    # ------------------------------------------------------------------ the API server

    def status(self, wanted: dict[str, Any]) -> dict[str, Any]:
        self.tick()
        found: dict[str, Any] = {}
        for name, fields in wanted.items():
            if name not in self.objects:
                continue
            value = self.objects[name]
            found[name] = json.loads(
                json.dumps(value if fields is None else {k: value[k] for k in fields if k in value})
            )
        return found

    async def push(self) -> None:
        """Send each subscriber what changed since it last heard (Klipper pushes about every 250 ms)."""
        eventtime = time.monotonic()
        for writer, method, wanted in list(self.subscribers):
            current = self.status(wanted)
            before = self.sent.setdefault(id(writer), {})
            diff: dict[str, Any] = {}
            for name, fields in current.items():
                changed = {k: v for k, v in fields.items() if before.get(name, {}).get(k) != v}
                if changed:
                    diff[name] = changed
            if not diff:
                continue
            self.sent[id(writer)] = current
            await send(writer, {"method": method, "params": {"eventtime": eventtime, "status": diff}})

    def handle(self, writer: asyncio.StreamWriter, method: str, params: dict[str, Any]) -> Any:
        if method == "info":
            webhooks = self.objects["webhooks"]
            return {
                "state": webhooks["state"],
                "state_message": webhooks["state_message"],
                "hostname": "werkbank-test",
                "software_version": "v0.12.0-werkbank-peer",
                "cpu_info": "simulated",
                "klipper_path": "/tmp/klipper",
                "python_path": sys.executable,
                "log_file": "/tmp/klippy.log",
                "config_file": "/tmp/printer.cfg",
                "process_id": os.getpid(),
                "user_id": os.getuid(),
                "group_id": os.getgid(),
            }
        if method == "list_endpoints":
            return {"endpoints": ENDPOINTS}
        if method == "objects/list":
            return {"objects": list(self.objects)}
        if method in ("objects/query", "objects/subscribe"):
            wanted = params.get("objects") or {}
            if method == "objects/subscribe":
                template = (params.get("response_template") or {}).get("method", "process_status_update")
                self.subscribers = [s for s in self.subscribers if s[0] is not writer]
                self.subscribers.append((writer, template, wanted))
                self.sent[id(writer)] = self.status(wanted)
            return {"eventtime": time.monotonic(), "status": self.status(wanted)}
        if method == "gcode/script":
            return self.gcode(str(params.get("script", "")))
        if method == "pause_resume/pause":
            self.pause()
            return {}
        if method == "pause_resume/resume":
            self.resume()
            return {}
        if method == "pause_resume/cancel":
            self.finish("cancelled")
            return {}
        if method in ("gcode/subscribe_output", "register_remote_method", "gcode/help"):
            return {}
        if method == "emergency_stop":
            self.finish("error", "Shutdown due to webhooks request")
            return {}
        raise KeyError(method)

    def gcode(self, script: str) -> Any:
        command, _, rest = script.strip().partition(" ")
        if command.upper() == "SDCARD_PRINT_FILE":
            filename = rest.split("=", 1)[1].strip().strip('"') if "=" in rest else ""
            problem = self.start(filename)
            if problem:
                raise ValueError(problem)
        elif command.upper() == "CANCEL_PRINT":
            self.finish("cancelled")
        elif command.upper() in ("PAUSE", "RESUME"):
            self.pause() if command.upper() == "PAUSE" else self.resume()
        return {}


async def send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\x03")
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def serve(printer: Printer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.readuntil(b"\x03")
            request = json.loads(data[:-1])
            try:
                result = printer.handle(writer, request.get("method", ""), request.get("params") or {})
            except KeyError as exc:
                answer = {
                    "id": request.get("id"),
                    "error": {"error": "WebRequestError", "message": f"No such endpoint {exc}"},
                }
            except ValueError as exc:
                answer = {"id": request.get("id"), "error": {"error": "WebRequestError", "message": str(exc)}}
            else:
                answer = {"id": request.get("id"), "result": result}
            await send(writer, answer)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        printer.subscribers = [s for s in printer.subscribers if s[0] is not writer]


async def control(printer: Printer) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        words = line.split()
        if not words:
            continue
        if words[0] == "print":
            plan = (float(words[2]), float(words[3])) if len(words) >= 4 else None
            printer.start(words[1], plan)
        elif words[0] == "plan":
            printer.plan = (float(words[1]), float(words[2]))
        elif words[0] == "pause":
            printer.pause()
        elif words[0] == "resume":
            printer.resume()
        elif words[0] == "cancel":
            printer.finish("cancelled")
        elif words[0] == "error":
            printer.finish("error", " ".join(words[1:]) or "MCU 'mcu' shutdown: Timer too close")
        await printer.push()


async def main_async(socket_path: str, gcodes: str) -> None:
    printer = Printer(gcodes)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server = await asyncio.start_unix_server(lambda r, w: serve(printer, r, w), path=socket_path)
    print("ready", flush=True)
    asyncio.get_running_loop().create_task(control(printer))
    async with server:
        while True:
            await asyncio.sleep(0.25)
            await printer.push()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--gcodes", required=True)
    parser.add_argument("--port", type=int)  # PeerProcess passes one; the socket is the address
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.socket, args.gcodes))


if __name__ == "__main__":
    main()
