"""``hdrlog demo`` (``make run``): the whole path on the embedded default.

Local stack up -> demo namespace and veth pair -> agent attached -> real
traffic (HTTP with curl, ping, ping6, a DNS query) -> agent stops -> the
consumer decodes what reached Kafka -> the agent's counters.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from producer.consumer.build import formatter, sink
from producer.consumer.runner import ConsumeOptions, Runner
from producer.errors import HdrlogError
from producer.netns import VethNamespace


def _say(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def _wait_listening(host: str, port: int, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise HdrlogError(f"demo HTTP server on {host}:{port} did not start")


def _traffic(net: VethNamespace) -> None:
    url = f"http://{net.peer_ip}:8080/"
    for argv in (
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
        ["ping", "-c", "3", "-i", "0.2", net.peer_ip],
        ["ping", "-6", "-c", "2", "-i", "0.2", net.peer_ip6],
        ["dig", f"@{net.peer_ip}", "+tries=1", "+time=1", "hdrlog.example", "A"],
    ):
        res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        _say(f"traffic: {' '.join(argv)} -> exit {res.returncode}")


def run_demo(*, iface: str | None, duration_s: float, topic: str, keep_network: bool,
             json_lines: bool = False, shapes: tuple[str, ...] = ("batch", "record")) -> int:
    from producer.devstack import LocalStack, StackSettings

    settings = StackSettings.from_env()
    _say("starting the local stack (Kafka + schema registry); the first run downloads them")
    LocalStack(settings).up()
    net = VethNamespace()
    server: subprocess.Popen[str] | None = None
    try:
        if iface is None:
            _say(f"creating namespace {net.ns} joined by veth {net.host_if} <-> {net.peer_if}")
            net.create()
            server = net.popen(["python3", "-m", "http.server", "--bind", net.peer_ip, "8080"])
            _wait_listening(net.peer_ip, 8080, 15)
        for shape in shapes:
            _one_shape(settings, net, iface, duration_s, f"{topic}.{shape}", shape, json_lines)
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        if iface is None and not keep_network:
            net.destroy()


#: the demo agent's state: a directory the user it becomes once attached can reach (not root's home)
DEMO_STATE = Path("/var/lib/hdrlog-demo")


def _agent(argv: list[str], ready: threading.Event, lines: list[str]) -> subprocess.Popen[str]:
    """``hdrlog agent`` as a user starts it (so it gives up root once attached, as by default); its log
    lines are shown as they come, ``ready`` is set once it captures (or exits)."""
    proc = subprocess.Popen([sys.executable, "-m", "producer", "--log-format", "json", "agent", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"msg": line.rstrip()}
            if "msg" in entry:
                print(f"    agent: {entry['msg']}", file=sys.stderr, flush=True)
            if "capturing on" in str(entry.get("msg", "")):
                ready.set()
        ready.set()

    threading.Thread(target=read, name="hdrlog-demo-agent", daemon=True).start()
    return proc


def _one_shape(settings: Any, net: VethNamespace, iface: str | None, duration_s: float, topic: str, shape: str,
               json_lines: bool) -> None:
    """One agent run in one message shape: traffic, then what the consumer reads, then the counters."""
    capture_on = iface or net.host_if
    ready, lines = threading.Event(), list[str]()
    proc = _agent(["--iface", capture_on, "--topic", topic, "--duration", f"{duration_s:g}", "--shape", shape,
                   "--bootstrap-servers", settings.bootstrap_servers, "--schema-registry", settings.registry_url,
                   "--host-id", socket.gethostname(), "--state-dir", str(DEMO_STATE), "--listen", "127.0.0.1:0"],
                  ready, lines)
    try:
        ready.wait(120)
        if proc.poll() is None:
            _say(f"[{shape}] agent capturing on {capture_on} for {duration_s:g}s, {shape} messages to {topic}")
            if iface is None:
                _traffic(net)
        proc.wait(duration_s + 180)
    finally:
        if proc.poll() is None:  # (interrupted, or it did not stop in time)
            proc.terminate()
            proc.wait(120)
    summary = next((json.loads(line)["summary"] for line in reversed(lines) if line.startswith('{"summary"')), None)
    if proc.returncode != 0 or summary is None:
        last = next((x for x in reversed(lines) if x.startswith("hdrlog: error:")), f"exit status {proc.returncode}")
        raise HdrlogError(f"the demo agent failed: {last.strip()}")
    delivered = summary["agent"]["delivered"]
    messages = summary["agent"]["messages_delivered"]
    what = "HeaderBatch" if shape == "batch" else "HeaderRecord"
    _say(f"[{shape}] consumer: {delivered} records in {messages} Kafka messages ({what}) from topic {topic}, "
         "decoded through the registry")
    fmt = "raw" if json_lines else "text"
    Runner(ConsumeOptions(
        bootstrap_servers=settings.bootstrap_servers, schema_registry=settings.registry_url,
        topic=topic, group="hdrlog-demo", from_beginning=True, max_records=delivered, idle_timeout_s=15),
        formatter(fmt), sink("stdout", fmt)).run(threading.Event())
    _say(f"[{shape}] agent counters")
    print(json.dumps(summary, indent=2), file=sys.stderr)
