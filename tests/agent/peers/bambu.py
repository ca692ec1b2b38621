"""A faithful peer of a Bambu Lab printer's local MQTT reports, run as its own process.

A Bambu printer in LAN mode is itself an MQTT broker (TLS on port 8883, user ``bblp``, password
= the access code, a certificate whose CN is the printer's serial). In the tests a private
Mosquitto with a TLS listener and a test CA plays the broker (tests/agent/bambu_printer.py);
this process plays the printer's firmware on it, with the printer's topic layout:

- ``device/<serial>/report``: ``{"print": {"command": "push_status", "gcode_state": IDLE|PREPARE|
  RUNNING|PAUSE|FINISH|FAILED, "gcode_file", "subtask_name", "gcode_start_time" (epoch s, text),
  "mc_percent", "mc_remaining_time" (minutes), "layer_num", "total_layer_num", "print_error",
  "nozzle_temper", "nozzle_target_temper", "bed_temper", "bed_target_temper", "chamber_temper",
  "sequence_id", …}}``. Field names and shapes from the push_status example in the community's
  OpenBambuAPI (``mqtt.md``; X1C firmware 01.01.x) and as P1/A1 firmware 01.04+ send them: a full
  report on request, otherwise only what changed (``--full`` sends full reports every time, as
  X1 firmware does).
- ``device/<serial>/request``: ``{"pushing": {"sequence_id": "…", "command": "pushall"}}`` is
  answered with a full report.

A print the user stops from the screen or the app ends ``FAILED`` with ``print_error``
50348044 (0x0300400C, "the task was cancelled"), as the community integrations read it.

The test drives the printer on stdin, one command a line: ``print NAME SECONDS``, ``pause``,
``resume``, ``stop`` (cancelled), ``fail`` (an error: 0x0300800A, filament runout… not
resumed), ``idle``.

    python -m tests.agent.peers.bambu --broker-port P --serial S --password PW --ca CA [--full]
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

CANCELLED = 50348044  # 0x0300400C


class Firmware:
    def __init__(self, client: mqtt.Client, serial: str, full: bool) -> None:
        self.client = client
        self.topic = f"device/{serial}/report"
        self.full = full
        self.lock = threading.Lock()
        self.sequence = 2000
        self.plan_s = 3.0
        self.started = 0.0
        self.paused_at: float | None = None
        self.paused_s = 0.0
        self.state: dict[str, Any] = {
            "command": "push_status",
            "gcode_state": "IDLE",
            "gcode_file": "",
            "gcode_file_prepare_percent": "0",
            "gcode_start_time": "0",
            "subtask_name": "",
            "subtask_id": "",
            "task_id": "",
            "mc_percent": 0,
            "mc_remaining_time": 0,
            "mc_print_stage": "1",
            "layer_num": 0,
            "total_layer_num": 0,
            "print_error": 0,
            "print_type": "",
            "nozzle_temper": 25.0,
            "nozzle_target_temper": 0.0,
            "bed_temper": 25.0,
            "bed_target_temper": 0.0,
            "chamber_temper": 24.0,
            "spd_lvl": 2,
            "spd_mag": 100,
            "wifi_signal": "-45dBm",
            "hms": [],
            "lifecycle": "product",
            "sdcard": True,
        }
        self.sent: dict[str, Any] = {}

    def report(self, full: bool = False) -> None:
        with self.lock:
            self.tick()
            self.sequence += 1
            body = dict(self.state)
            if not (full or self.full):
                body = {k: v for k, v in body.items() if self.sent.get(k) != v}
                if not body:
                    return
                body["command"] = "push_status"
            body["sequence_id"] = str(self.sequence)
            self.sent.update(self.state)
        self.client.publish(self.topic, json.dumps({"print": body}), qos=0)

    def tick(self) -> None:
        state = self.state
        if state["gcode_state"] not in ("PREPARE", "RUNNING", "PAUSE"):
            return
        now = time.monotonic()
        paused = self.paused_s + (now - self.paused_at if self.paused_at is not None else 0.0)
        done = min(max(now - self.started - paused, 0.0) / self.plan_s, 1.0)
        if state["gcode_state"] == "PREPARE" and now - self.started >= 0.3:
            state.update(gcode_state="RUNNING", mc_print_stage="2", nozzle_temper=219.6, bed_temper=54.8)
        state.update(
            mc_percent=int(done * 100),
            mc_remaining_time=max(int((self.plan_s * (1 - done)) / 60 + 0.999), 0),
            layer_num=int(done * state["total_layer_num"]),
        )
        if done >= 1.0 and state["gcode_state"] == "RUNNING":
            self.finish("FINISH")

    def start(self, name: str, seconds: float) -> None:
        self.plan_s = seconds
        self.started = time.monotonic()
        self.paused_at = None
        self.paused_s = 0.0
        self.state.update(
            gcode_state="PREPARE",
            gcode_file=f"/data/Metadata/{name}.gcode",
            subtask_name=name,
            subtask_id=str(int(time.time() * 1000)),
            gcode_start_time=str(int(time.time())),
            mc_percent=0,
            mc_remaining_time=max(int(seconds / 60 + 0.999), 1),
            layer_num=0,
            total_layer_num=120,
            print_error=0,
            print_type="local",
            nozzle_target_temper=220.0,
            bed_target_temper=55.0,
        )

    def finish(self, state: str, error: int = 0) -> None:
        self.state.update(
            gcode_state=state,
            print_error=error,
            nozzle_target_temper=0.0,
            bed_target_temper=0.0,
            mc_print_stage="1",
        )

    def command(self, words: list[str]) -> None:
        with self.lock:
            self.tick()
            if words[0] == "print":
                self.start(words[1], float(words[2]))
            elif words[0] == "pause" and self.state["gcode_state"] == "RUNNING":
                self.paused_at = time.monotonic()
                self.state["gcode_state"] = "PAUSE"
            elif words[0] == "resume" and self.state["gcode_state"] == "PAUSE" and self.paused_at is not None:
                self.paused_s += time.monotonic() - self.paused_at
                self.paused_at = None
                self.state["gcode_state"] = "RUNNING"
            elif words[0] == "stop":
                self.finish("FAILED", CANCELLED)
            elif words[0] == "fail":
                self.finish("FAILED", 50364437)  # 0x0300800A: an error the print did not survive
            elif words[0] == "idle":
                self.state.update(gcode_state="IDLE", print_error=0)
        self.report()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--serial", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--port", type=int)  # PeerProcess passes one; the broker is the address
    args = parser.parse_args(argv)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"printer-{args.serial}", protocol=mqtt.MQTTv311
    )
    client.username_pw_set("printer-firmware", args.password)
    client.tls_set(ca_certs=args.ca, cert_reqs=ssl.CERT_REQUIRED)
    client.tls_insecure_set(True)  # the broker's certificate names the serial, not 127.0.0.1
    firmware = Firmware(client, args.serial, args.full)
    ready = threading.Event()

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        c.subscribe(f"device/{args.serial}/request", qos=1)

    def on_subscribe(*_: Any) -> None:
        ready.set()

    def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            request = json.loads(message.payload)
        except ValueError:
            return
        if (request.get("pushing") or {}).get("command") == "pushall":
            firmware.report(full=True)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.broker_port)
    client.loop_start()
    if not ready.wait(10):
        sys.exit("could not subscribe to the request topic")

    def control() -> None:
        for line in sys.stdin:
            words = line.split()
            if words:
                firmware.command(words)

    threading.Thread(target=control, daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(0.5)  # a busy printer reports about twice a second
        if firmware.state["gcode_state"] in ("PREPARE", "RUNNING", "PAUSE"):
            firmware.report()
        else:
            with firmware.lock:
                firmware.tick()


if __name__ == "__main__":
    main()
