"""End to end: records delivered to Kafka per agent CPU-second, and the accounting under overload.

Runs `hdrlog agent` (tc hook, the local stack, --shape batch or record) on a veth pair while
a UDP flood crosses it for S seconds, stops it with SIGTERM, and reads the agent's CPU
time (user + system, all threads, librdkafka's included) from wait4().  Prints the
records delivered per agent CPU-second and the exit summary: under overload the
ring buffer fills and `ringbuf_reserve_failed` counts what the kernel could not keep.
Needs root and the local stack (`hdrlog stack up`).
Usage: .venv/bin/python benchmarks/agent_e2e.py [seconds] [batch|record]
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer.devstack import StackSettings  # noqa: E402
from producer.netns import VethNamespace  # noqa: E402


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    shape = sys.argv[2] if len(sys.argv) > 2 else "batch"
    state = tempfile.mkdtemp(prefix="hdrlog-bench-")
    stack = StackSettings.from_env()
    net = VethNamespace(ns="hlbench2", host_if="hlbe2a", peer_if="hlbe2b",
                        host_ip="10.207.0.1", peer_ip="10.207.0.2")
    net.create(quiet=True)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((net.host_ip, 7000))
    agent = subprocess.Popen(
        [sys.executable, "-m", "producer", "--log-format", "json", "agent", "--iface", net.host_if,
         "--bootstrap-servers", stack.bootstrap_servers, "--schema-registry", stack.registry_url,
         "--topic", f"hdrlog.bench.{shape}.{uuid.uuid4().hex[:8]}", "--shape", shape, "--state-dir", state,
         "--listen", "off"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stderr is not None
        while '"capturing on' not in agent.stderr.readline():
            if agent.poll() is not None:
                raise SystemExit("the agent did not start")
        sent = int(net.udp(net.host_ip, 7000, seconds=seconds).communicate()[0])
        agent.send_signal(signal.SIGTERM)
        err = agent.stderr.read()
        _, status, usage = os.wait4(agent.pid, 0)
        agent.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if agent.poll() is None:
            agent.kill()
        sink.close()
        net.destroy()
    summary = next(json.loads(x)["summary"] for x in err.splitlines() if x.startswith('{"summary"'))
    cpu = usage.ru_utime + usage.ru_stime
    k, a = summary["kernel"], summary["agent"]
    delivered = a.get("delivered", 0)
    print(f"sent {sent} in {seconds:g}s; kernel {k}")
    print(f"agent {a}")
    print(f"agent CPU {cpu:.2f}s (user {usage.ru_utime:.2f}, system {usage.ru_stime:.2f}); "
          f"{delivered / cpu:,.0f} records delivered per agent CPU-second")
    print(f"accounted: seen {k['seen']} = emitted {k['emitted']} + ringbuf_reserve_failed "
          f"{k['ringbuf_reserve_failed']} + filtered {k['filtered']} + sampled_out {k['sampled_out']}; "
          f"emitted = delivered {delivered} + dropped "
          f"{sum(v for n, v in a.items() if n.startswith('dropped_'))}")


if __name__ == "__main__":
    main()
