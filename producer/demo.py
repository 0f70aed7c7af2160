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
from typing import Any

from producer.agent import AgentReport
from producer.config import load_config
from producer.consumer.build import formatter, sink
from producer.consumer.runner import ConsumeOptions, Runner
from producer.errors import HdrlogError
from producer.netns import VethNamespace
from producer.pipeline import build


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


def _one_shape(settings: Any, net: VethNamespace, iface: str | None, duration_s: float, topic: str, shape: str,
               json_lines: bool) -> None:
    """One agent run in one message shape: traffic, then what the consumer reads, then the counters."""
    cfg = load_config(overrides={
        "capture.interfaces": [iface or net.host_if], "kafka.topic": topic, "duration_s": duration_s,
        "kafka.bootstrap_servers": settings.bootstrap_servers, "kafka.shape": shape,
        "registry.url": settings.registry_url, "host_id": socket.gethostname(),
        "state_dir": str(settings.cache_dir / "demo-state"), "telemetry.listen": "127.0.0.1:0",
    })
    agent = build(cfg)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["report"] = agent.run(threading.Event())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            result["error"] = exc
            agent.ready.set()

    thread = threading.Thread(target=run, name="hdrlog-demo-agent")
    thread.start()
    agent.ready.wait(120)
    if "error" not in result:
        _say(f"[{shape}] agent capturing on {cfg.capture.interfaces[0]} for {duration_s:g}s, "
             f"{shape} messages to {topic}")
        if iface is None:
            _traffic(net)
    thread.join()
    if "error" in result:
        raise result["error"]
    report: AgentReport = result["report"]
    delivered = report.user["delivered"]
    messages = report.user["messages_delivered"]
    what = "HeaderBatch" if shape == "batch" else "HeaderRecord"
    _say(f"[{shape}] consumer: {delivered} records in {messages} Kafka messages ({what}) from topic {topic}, "
         "decoded through the registry")
    fmt = "raw" if json_lines else "text"
    Runner(ConsumeOptions(
        bootstrap_servers=settings.bootstrap_servers, schema_registry=settings.registry_url,
        topic=topic, group="hdrlog-demo", from_beginning=True, max_records=delivered, idle_timeout_s=15),
        formatter(fmt), sink("stdout", fmt)).run(threading.Event())
    _say(f"[{shape}] agent counters")
    print(json.dumps(report.as_dict(), indent=2), file=sys.stderr)
