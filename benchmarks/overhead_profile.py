"""Where the data-path overhead goes: the flood's sender profiled with and without the agent.

Runs the benchmark's C sender flat out across the veth pair for S seconds, twice: alone,
and with `hdrlog agent` (batch, defaults) attached; `perf record -a` samples the whole
machine meanwhile.  Prints the packets/s the pair carried each time, their ratio (the
benchmark's data-path overhead), and the kernel symbols whose share of the sender's CPU
samples grew most with the agent attached (the tc program, the ring buffer, wake-ups).
Needs root, perf (linux-perf) and the local stack.
Usage: .venv/bin/python benchmarks/overhead_profile.py [seconds]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producer.bench.agent import HdrlogContender  # noqa: E402
from producer.bench.run import Bench  # noqa: E402


def samples(data: Path, comm: str) -> dict[str, int]:
    out = subprocess.run(["perf", "report", "-i", str(data), "--comm", comm, "--sort", "sym", "-n", "--stdio"],
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"\s+[\d.]+%\s+(\d+)\s+\[.\]\s+(\S+)", line)
        if m:
            found[m.group(2)] = int(m.group(1))
    return found


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    work = Path(tempfile.mkdtemp(prefix="hdrlog-overhead-"))
    carried: dict[str, float] = {}
    comm = ""
    with Bench(print, seconds, work) as bench:
        comm = bench.sender.name[:15]  # the kernel's comm: the first 15 characters
        for mode in ("alone", "agent"):
            running = HdrlogContender("batch").start(bench.target("overhead")) if mode == "agent" else None
            perf = subprocess.Popen(["perf", "record", "-a", "-F", "999", "-o", str(work / f"{mode}.perf"), "--",
                                     "sleep", str(max(1.0, seconds - 1))],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _sent, link = bench.traffic(0, seconds)
            perf.wait()
            if running is not None:
                running.stop()
            carried[mode] = link["rx_packets"] / seconds
    print(f"carried: alone {carried['alone']:,.0f} packets/s, agent attached {carried['agent']:,.0f}: "
          f"{carried['agent'] / carried['alone']:.3f}")
    a, b = samples(work / "alone.perf", comm), samples(work / "agent.perf", comm)
    ta, tb = sum(a.values()) or 1, sum(b.values()) or 1
    grew = sorted(set(a) | set(b), key=lambda s: -(b.get(s, 0) / tb - a.get(s, 0) / ta))
    print(f"share of the sender's CPU samples ({ta} alone, {tb} with the agent), largest growth first:")
    for sym in grew[:15]:
        print(f"  {sym:<48} alone {a.get(sym, 0) / ta:6.2%}  with the agent {b.get(sym, 0) / tb:6.2%}")


if __name__ == "__main__":
    main()
