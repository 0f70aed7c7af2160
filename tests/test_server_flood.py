"""The local HTTP server under hostile clients, while capture runs: slow clients that never finish their
headers, a request with a huge header, and a wrk flood.  None of it may stop capture or grow the agent
without bound.

The agent writes JSON lines (no Kafka), so every datagram the sender sends across the veth must be a
record, exactly; meanwhile:

* 200 connections send half a request line and then nothing: granian closes each after its header
  timeout (server.HEADER_TIMEOUT_S), and /api/v1/status answers all along;
* a request with a 1 MiB header is refused (431) and the next request is answered;
* wrk floods /metrics with 256 connections (the token required, so half of them are 401s);
* the kernel's and the agent's record counters keep moving in every sample taken during it (as often as
  a status request gets through the flood, at least three), and afterwards the
  agent's RSS and open file descriptors are back within a bound of where they started.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from producer.bench.ingest import rss_kib
from producer.telemetry.server import HEADER_TIMEOUT_S
from tests.conftest import summary_of, wait_for

pytestmark = [pytest.mark.kernel]

TOKEN = "flood-test-token"
SLOW = 200
RATE = 2_000  # datagrams/s across the veth for the whole run
FLOOD_S = 8
#: what the agent may have grown by once the clients are gone (RSS), and file descriptors left over
RSS_BOUND_KIB = 48 << 10
FD_BOUND = 8


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_slow_clients_huge_headers_and_a_flood_neither_stop_capture_nor_grow_the_agent(
        quiet_veth: Any, start_agent: Any, udp_sinks: Any, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    udp_sinks(6400)
    agent = start_agent(quiet_veth.host_if, "--stdout", env={"HDRLOG_TOKEN_FILE": str(token)})
    agent.wait_attached()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    host, port = agent.url.removeprefix("http://").rsplit(":", 1)

    def status() -> dict[str, Any]:
        return dict(httpx2.get(agent.url + "/api/v1/status", headers=auth, timeout=5).json())

    pid = agent.proc.pid
    status()  # warm: the first request builds what every later one reuses
    rss0, fds0 = rss_kib(pid), _fds(pid)
    duration = HEADER_TIMEOUT_S + FLOOD_S + 10
    sender = quiet_veth.udp(quiet_veth.host_ip, 6400, seconds=duration, rate=RATE)
    moving: list[tuple[int, int]] = []
    try:
        # slow clients: half a request line each, then silence
        slow = [socket.create_connection((host, int(port)), timeout=HEADER_TIMEOUT_S + 20) for _ in range(SLOW)]
        for s in slow:
            s.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n")
        assert "agent" in status()  # answered (within status()'s 5 s) while they hang

        # a huge header: refused, and the server goes on
        huge = httpx2.get(agent.url + "/api/v1/status", headers={**auth, "X-Big": "a" * (1 << 20)}, timeout=10)
        assert huge.status_code == 431, huge.status_code
        assert "agent" in status()

        # the flood, with the counters sampled every second of it
        wrk = subprocess.Popen(["wrk", "-t2", "-c256", f"-d{FLOOD_S}s", "--timeout", "10s", "-H",
                                f"Authorization: Bearer {TOKEN}", agent.url + "/metrics"],
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while wrk.poll() is None:  # a status request waits its turn among the flood's: as often as it can
            s = status()
            moving.append((s["kernel"]["emitted"], s["agent"]["drained"]))
            time.sleep(0.5)  # the sampling period of the check below, not a synchronisation
        out, err = wrk.communicate(timeout=60)
        assert wrk.returncode == 0, err
        done = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
        errors = re.search(r"Socket errors: (.*)", out)
        assert done > 1000 and errors is None, out

        # the slow clients were cut off by the server (closed, or a 408 first), not left holding connections
        def cut_off(s: socket.socket) -> bool:
            try:
                got = s.recv(4096)  # blocks until the server closes or answers (the socket's timeout)
            except TimeoutError:
                return False
            return got == b"" or got.startswith(b"HTTP/1.1 408 ")

        assert all(cut_off(s) for s in slow)
        for s in slow:
            s.close()
    finally:
        sent = int(sender.communicate(timeout=duration + 60)[0])
    wait_for(lambda: sum(1 for r in agent.records() if r["dst_port"] == 6400) >= sent, 30,
             "every datagram as a record")
    wait_for(lambda: _fds(pid) <= fds0 + FD_BOUND, 30, "the connections' descriptors to be released")
    rss1, fds1 = rss_kib(pid), _fds(pid)
    _out, err = agent.stop()
    assert agent.proc.returncode == 0, err
    assert sum(1 for r in agent.records() if r["dst_port"] == 6400) == sent
    assert summary_of(err)["kernel"]["ringbuf_reserve_failed"] == 0
    emitted = [e for e, _d in moving]
    drained = [d for _e, d in moving]
    assert len(moving) >= 3 and all(b > a for a, b in zip(emitted, emitted[1:], strict=False)) and all(
        b > a for a, b in zip(drained, drained[1:], strict=False)), moving
    assert rss1 - rss0 <= RSS_BOUND_KIB, (rss0, rss1)
    assert fds1 <= fds0 + FD_BOUND, (fds0, fds1)
    print(f"flood: {done} requests in {FLOOD_S} s over 256 connections, {SLOW} slow clients cut off, "
          f"{sent} datagrams all recorded; RSS {rss0 >> 10} -> {rss1 >> 10} MiB, fds {fds0} -> {fds1}")
