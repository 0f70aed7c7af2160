"""The mmap ring-buffer reader under a sustained flood: nothing is refused, nothing is lost.

A reader that publishes its consumer position with a torn (bytewise) write makes
the kernel see a stale, smaller position for an instant and refuse reservations
it has room for: this flood caught that (dozens of failures per million records).
The loop is the agent's own (capture/source.py), not a copy.
"""

from __future__ import annotations

import socket
import threading

import pytest

from producer import abi
from producer.capture.control import CaptureControl
from producer.capture.program import CaptureProgram, ProgramOptions
from producer.capture.ringbuf import RingBufferReader
from producer.capture.source import KernelSource, Ring
from producer.capture.tc import TcHooks
from producer.channel import Cancel, Channel, Closed
from producer.config import CaptureConfig
from producer.records import Chunk
from producer.telemetry.events import Stat, Telemetry

pytestmark = pytest.mark.kernel


def test_flood_is_read_completely_with_room_to_spare(quiet_veth) -> None:
    net = quiet_veth
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((net.host_ip, 7000))
    prog = CaptureProgram(ProgramOptions(4096))
    tc = TcHooks()
    telemetry = Telemetry()
    chunks: Channel[Chunk] = Channel("capture", 64)
    detached = threading.Event()
    read, ports = [0], set()

    def consume() -> None:
        while True:
            try:
                chunk = chunks.get(0.5)
            except Closed:
                return
            if chunk is not None:
                read[0] += len(chunk)
                ports.update(chunk.records["dst_port"].tolist())

    try:
        CaptureControl(prog.bpf).apply(CaptureConfig())
        reader = RingBufferReader(prog.ringbuf_fd, prog.ringbuf_size, abi.RECORD_DTYPE)
        source = KernelSource([Ring("c", reader, lambda: prog.counters()["emitted"])], chunks, telemetry,
                              Cancel(), detached, 0.05)
        idx = tc.ifindex(net.host_if)
        tc.attach(idx, "ingress", prog.ingress.fd, "hdrlog_ingress", 7)
        threads = [threading.Thread(target=source.run), threading.Thread(target=consume)]
        for t in threads:
            t.start()
        sender = net.udp(net.host_ip, 7000, seconds=3)
        sent = int(sender.communicate(timeout=60)[0])
        tc.remove_ours(idx)
        detached.set()
        for t in threads:
            t.join(30)
        k = prog.counters()
        reader.close()
    finally:
        tc.close()
        prog.close()
        sink.close()
    assert sent > 100_000
    assert k["ringbuf_reserve_failed"] == 0
    assert k["seen"] == k["emitted"] == read[0] == telemetry.get(Stat.DRAINED) == sent
    assert ports == {7000}
