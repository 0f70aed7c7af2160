"""The mmap ring-buffer reader under a sustained flood: nothing is refused, nothing is lost.

A reader that publishes its consumer position with a torn (bytewise) write makes
the kernel see a stale, smaller position for an instant and refuse reservations
it has room for: this flood caught that (dozens of failures per million records).
"""

from __future__ import annotations

import socket
import time

import pytest

from producer.capture.control import CaptureControl
from producer.capture.program import CaptureProgram, ProgramOptions
from producer.capture.ringbuf import RingBufferReader
from producer.capture.tc import TcHooks
from producer.config import AgentConfig
from producer.decode import layout

pytestmark = pytest.mark.kernel

def test_flood_is_read_completely_with_room_to_spare(quiet_veth) -> None:
    net = quiet_veth
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((net.host_ip, 7000))
    prog = CaptureProgram(ProgramOptions(4096))
    tc = TcHooks()
    try:
        CaptureControl(prog.bpf).apply(AgentConfig())
        reader = RingBufferReader(prog.ringbuf_fd, prog.ringbuf_size, layout.RECORD_DTYPE)
        idx = tc.ifindex(net.host_if)
        tc.attach(idx, "ingress", prog.ingress.fd, "hdrlog_ingress", 7)
        sender = net.udp(net.host_ip, 7000, seconds=3)
        read, ports = 0, set()
        while sender.poll() is None or reader.pending_bytes():
            reader.wait(0.05)
            chunk = reader.drain(8192)
            read += len(chunk)
            ports.update(chunk["dst_port"].tolist())
            if len(chunk) < 8192:
                time.sleep(0.01)
        sent = int(sender.communicate()[0])
        tc.remove_ours(idx)
        read += len(reader.drain())
        k = prog.counters()
        reader.close()
    finally:
        tc.close()
        prog.close()
        sink.close()
    assert sent > 100_000
    assert k["ringbuf_reserve_failed"] == 0
    assert k["seen"] == k["emitted"] == read == sent
    assert ports == {7000}
