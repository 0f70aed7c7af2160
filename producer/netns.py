"""A namespace joined to this one by a veth pair: the demo network and the
test bed of the kernel tests.

    [this namespace] <host_if> 10.203.0.1/24, fd00:203::1/64
          |  veth
    [netns <ns>]     <peer_if> 10.203.0.2/24, fd00:203::2/64

The agent attaches to ``host_if`` from this namespace, so it reaches the
broker on 127.0.0.1 while the traffic crosses a real veth pair.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from producer.errors import HdrlogError

# Sends 18-byte UDP datagrams: `count` of them, or as many as it can for `seconds`, or
# `rate` per second for `seconds` (steady traffic); prints how many.  Run inside the
# namespace by VethNamespace.udp().
_UDP_SENDER = """
import signal, socket, sys, time
dst, dport, sport, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seconds, rate = float(sys.argv[5]), float(sys.argv[6])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))  # ends the run early; the count stays exact
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", sport))
n = 0
if count:
    for _ in range(count):
        s.sendto(b"x" * 18, (dst, dport))
    n = count
elif rate:
    start = time.monotonic()
    while time.monotonic() - start < seconds and not stop:
        due = int((time.monotonic() - start) * rate)
        while n < due:
            s.sendto(b"x" * 18, (dst, dport))
            n += 1
        time.sleep(0.005)
else:
    end = time.time() + seconds
    while time.time() < end and not stop:
        for _ in range(1000):
            s.sendto(b"x" * 18, (dst, dport))
        n += 1000
print(n)
"""


@dataclass(frozen=True, slots=True)
class VethNamespace:
    ns: str = "hdrlog-demo"
    host_if: str = "hdrlog0"
    peer_if: str = "hdrlog1"
    host_ip: str = "10.203.0.1"
    peer_ip: str = "10.203.0.2"
    host_ip6: str = "fd00:203::1"
    peer_ip6: str = "fd00:203::2"

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if check and res.returncode != 0:
            raise HdrlogError(f"ip {' '.join(args)}: {res.stderr.strip()}")
        return res

    def exists(self) -> bool:
        return self._ip("netns", "pids", self.ns, check=False).returncode == 0

    def create(self, *, quiet: bool = False) -> None:
        """(Re)create the namespace and the veth pair, addresses up, IPv6 DAD off.

        ``quiet``: IPv4 only, with static neighbour entries, so that no packet
        crosses the pair but the ones a test sends (no ARP, ND, MLD, RS).
        """
        self.destroy()
        self._ip("netns", "add", self.ns)
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if,
                 "netns", self.ns)
        for sysctl in (f"net.ipv6.conf.{self.host_if}.accept_dad=0",):
            subprocess.run(["sysctl", "-qw", sysctl], check=False)
        self.exec(["sysctl", "-qw", f"net.ipv6.conf.{self.peer_if}.accept_dad=0"], check=False)
        self._ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        if not quiet:
            self._ip("addr", "add", f"{self.host_ip6}/64", "dev", self.host_if, "nodad")
        self._ip("-n", self.ns, "addr", "add", f"{self.peer_ip}/24", "dev", self.peer_if)
        if not quiet:
            self._ip("-n", self.ns, "addr", "add", f"{self.peer_ip6}/64", "dev", self.peer_if, "nodad")
        if quiet:
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{self.host_if}.disable_ipv6=1"], check=True)
            self.exec(["sysctl", "-qw", f"net.ipv6.conf.{self.peer_if}.disable_ipv6=1"])
            self._ip("neigh", "add", self.peer_ip, "lladdr", self.mac(peer=True), "dev", self.host_if,
                     "nud", "permanent")
            self._ip("-n", self.ns, "neigh", "add", self.host_ip, "lladdr", self.mac(peer=False), "dev",
                     self.peer_if, "nud", "permanent")
        self._ip("link", "set", self.host_if, "up")
        self._ip("-n", self.ns, "link", "set", self.peer_if, "up")
        self._ip("-n", self.ns, "link", "set", "lo", "up")

    def mac(self, *, peer: bool) -> str:
        args = ["-n", self.ns, "-j", "link", "show", self.peer_if] if peer else \
            ["-j", "link", "show", self.host_if]
        return str(json.loads(self._ip(*args).stdout)[0]["address"])

    def destroy(self) -> None:
        self._ip("link", "del", self.host_if, check=False)
        self._ip("netns", "del", self.ns, check=False)

    def exec(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
             input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        res = subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                             text=True, check=False, timeout=timeout, input=input_text)
        if check and res.returncode != 0:
            raise HdrlogError(f"in netns {self.ns}: {' '.join(argv)}: {res.stderr.strip()}")
        return res

    def udp(self, dst: str, dport: int, *, count: int = 0, seconds: float = 0.0, rate: float = 0.0,
            sport: int = 0) -> subprocess.Popen[str]:
        """Start a UDP sender in the namespace (``count`` datagrams, a ``seconds`` flood, or ``rate``
        per second for ``seconds``); it prints how many it sent, also when SIGTERM ends it early."""
        return self.popen(["/usr/bin/python3", "-c", _UDP_SENDER, dst, str(dport), str(sport), str(count),
                           str(seconds), str(rate)])

    def popen(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
