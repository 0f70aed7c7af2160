"""Capture-stage benchmark: records per reader CPU-second, side by side in one run.

The same UDP flood (a Python sender in a namespace, through a veth pair, tc
ingress hook) is read three ways, one after the other:

  callback   bcc's open_ring_buffer(): one Python callback per record (the usual way),
             doing no more than copying the record out (so its cost is a lower bound)
  chase      our mmap reader, draining whenever anything is there
  paced      the agent's own capture stage (capture/source.py: pause 10 ms after a partial drain)

It reports each reader's CPU time per record and records per CPU-second, the
records the kernel emitted and the reservation failures, and the ratios.
Needs root.  Usage: .venv/bin/python benchmarks/capture_drain.py [seconds]
"""

from __future__ import annotations

import ctypes
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producer import abi  # noqa: E402
from producer.capture.control import CaptureControl  # noqa: E402
from producer.capture.program import CaptureProgram, ProgramOptions  # noqa: E402
from producer.capture.ringbuf import RingBufferReader  # noqa: E402
from producer.capture.source import KernelSource, Ring  # noqa: E402
from producer.capture.tc import TcHooks  # noqa: E402
from producer.channel import Cancel, Channel, Closed  # noqa: E402
from producer.config import CaptureConfig  # noqa: E402
from producer.netns import VethNamespace  # noqa: E402
from producer.records import Chunk  # noqa: E402
from producer.telemetry.events import Telemetry  # noqa: E402


def run(mode: str, net: VethNamespace, seconds: float) -> dict[str, float]:
    prog = CaptureProgram(ProgramOptions(4096))
    CaptureControl(prog.bpf).apply(CaptureConfig())
    tc = TcHooks()
    idx = tc.ifindex(net.host_if)
    tc.attach(idx, "ingress", prog.ingress.fd, "hdrlog_ingress", 7)
    got = 0
    try:
        sender = net.udp(net.host_ip, 7000, seconds=seconds)
        t0 = time.thread_time()
        if mode == "callback":
            def cb(_ctx: object, data: int, size: int) -> int:
                nonlocal got
                ctypes.string_at(data, size)  # the least a callback reader does: copy the record out
                got += 1
                return 0
            prog.bpf[b"events"].open_ring_buffer(cb)
            while sender.poll() is None:
                prog.bpf.ring_buffer_poll(50)
            prog.bpf.ring_buffer_consume()
        elif mode == "chase":
            reader = RingBufferReader(prog.ringbuf_fd, prog.ringbuf_size, abi.RECORD_DTYPE)
            while sender.poll() is None or reader.pending_bytes():
                reader.wait(0.05)
                while True:
                    n = len(reader.drain(8192)[0])
                    got += n
                    if n == 0:
                        break
        else:
            reader = RingBufferReader(prog.ringbuf_fd, prog.ringbuf_size, abi.RECORD_DTYPE)
            chunks: Channel[Chunk] = Channel("capture", 64)
            detached = threading.Event()
            source = KernelSource([Ring("bench", reader, lambda: prog.counters()["emitted"])], chunks,
                                  Telemetry(), Cancel(), detached, 0.05)
            cpu_box = [0.0]

            def run_source() -> None:
                start = time.thread_time()
                source.run()
                cpu_box[0] = time.thread_time() - start

            th = threading.Thread(target=run_source)
            th.start()
            while True:
                if sender.poll() is not None and not detached.is_set():
                    detached.set()
                try:
                    chunk = chunks.get(0.05)
                except Closed:
                    break
                if chunk is not None:
                    got += len(chunk)
            th.join()
            t0 = time.thread_time() - cpu_box[0]  # report the capture thread's CPU, not this one's
        cpu = time.thread_time() - t0
        sent = int(sender.communicate()[0])
        k = prog.counters()
    finally:
        tc.remove_ours(idx)
        tc.drop_empty_clsact(idx)
        tc.close()
        prog.close()
    return {"sent": sent, "read": got, "emitted": k["emitted"], "rb_fail": k["ringbuf_reserve_failed"],
            "cpu_s": cpu, "us_per_record": cpu / max(got, 1) * 1e6, "records_per_cpu_s": got / cpu}


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    net = VethNamespace(ns="hlbench", host_if="hlbencha", peer_if="hlbenchb",
                        host_ip="10.206.0.1", peer_ip="10.206.0.2")
    net.create(quiet=True)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("10.206.0.1", 7000))  # no ICMP port-unreachable replies
    try:
        results = {m: run(m, net, seconds) for m in ("callback", "chase", "paced")}
    finally:
        sink.close()
        net.destroy()
    print(f"{'reader':<9} {'sent':>9} {'read':>9} {'emitted':>9} {'rb_fail':>7} {'cpu s':>6} "
          f"{'us/rec':>7} {'rec/cpu-s':>11}")
    for m, r in results.items():
        print(f"{m:<9} {r['sent']:>9.0f} {r['read']:>9.0f} {r['emitted']:>9.0f} {r['rb_fail']:>7.0f} "
              f"{r['cpu_s']:>6.2f} {r['us_per_record']:>7.2f} {r['records_per_cpu_s']:>11,.0f}")
    base = results["callback"]["records_per_cpu_s"]
    for m in ("chase", "paced"):
        print(f"{m} / callback: {results[m]['records_per_cpu_s'] / base:.1f}x records per CPU-second")


if __name__ == "__main__":
    main()
