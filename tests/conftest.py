"""Shared fixtures: the real local stack, veth namespaces, the agent as a process.

Under CI=true a skipped test is a failure: markers select tests, they never
excuse them.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
HDRLOG = [sys.executable, "-m", "producer"]
_ids = itertools.count()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and os.environ.get("CI") == "true" and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        reason = rep.longrepr[-1] if isinstance(rep.longrepr, tuple) else rep.longrepr
        rep.longrepr = f"skipped under CI=true (a skip is a failure here): {reason}"


def wait_for(cond: Callable[[], Any], deadline_s: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``cond`` until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline_s
    while True:
        val = cond()
        if val:
            return val
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session", autouse=True)
def _session_pins() -> Iterator[None]:
    """The session's agents pin their captures under a directory of their own (HDRLOG_PIN_DIR), removed at
    the end: a killed agent's pins, in a state directory's scope no later agent has, would otherwise keep
    its ring buffer in the kernel's memory after the tests."""
    import shutil

    pins = Path(f"/sys/fs/bpf/hdrlog-tests-{os.getpid()}")
    if "HDRLOG_PIN_DIR" in os.environ or not Path("/sys/fs/bpf").is_dir() or os.geteuid() != 0:
        yield
        return
    os.environ["HDRLOG_PIN_DIR"] = str(pins)
    try:
        yield
    finally:
        del os.environ["HDRLOG_PIN_DIR"]
        shutil.rmtree(pins, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _temp_dirs_others_can_pass(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Started as root, an agent becomes the user ``hdrlog`` once attached (its default) and must reach its
    state directory, and read its config again at SIGHUP; pytest makes its directories root's alone
    (0700). Here they let others through (0711: searched, not listed), as /var/lib lets hdrlog reach
    /var/lib/hdrlog."""
    base = tmp_path_factory.getbasetemp()
    for d in (base.parent, base) if base.parent.name.startswith("pytest-of-") else (base,):
        d.chmod(0o711)
    original = pytest.TempPathFactory.mktemp

    def mktemp(self: pytest.TempPathFactory, basename: str, numbered: bool = True) -> Path:
        made = original(self, basename, numbered)
        made.chmod(0o711)
        return made

    pytest.TempPathFactory.mktemp = mktemp  # type: ignore[method-assign]
    try:
        yield
    finally:
        pytest.TempPathFactory.mktemp = original  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def root_required() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF, tc, network namespaces)")


@pytest.fixture(scope="session")
def stack() -> Iterator[Any]:
    """The real local Kafka + Apicurio registry, started once per session; the topics the session made
    are deleted at its end."""
    from producer.bench.contenders import delete_topics, topics_named
    from producer.devstack import LocalStack, StackSettings

    settings = StackSettings.from_env()
    LocalStack(settings).up(secure=True)  # the SASL_SSL listener too (tests/test_kafka_security.py)
    bootstrap = settings.bootstrap_servers
    before = topics_named(bootstrap, "hdrlog.", _say)
    yield settings
    after = topics_named(bootstrap, "hdrlog.", _say)
    if before is not None and after is not None:
        delete_topics(bootstrap, after - before, _say)  # the session's own


def _say(text: str) -> None:
    print(f"\nconftest: {text}", file=sys.stderr)


def _optional_service(stack: Any, name: str) -> Iterator[str]:
    """``hdrlog stack up --<name>`` for a test module; stopped after it if this started it: its JVM
    must not load the timing-sensitive tests that follow."""
    from producer.devstack import LocalStack

    local = LocalStack(stack)
    before = getattr(local.status(), name)
    local.up(**{f"with_{name}": True})
    yield str(getattr(stack, f"{name}_url"))
    if before is None or not before.running:
        local.stop_optional(**{f"{name}_too": True})


@pytest.fixture(scope="module")
def opensearch(stack: Any) -> Iterator[str]:
    """A real OpenSearch node; its URL."""
    yield from _optional_service(stack, "opensearch")


@pytest.fixture(scope="module")
def connect(stack: Any) -> Iterator[str]:
    """A real Kafka Connect worker; its REST URL."""
    yield from _optional_service(stack, "connect")


@pytest.fixture
def veth(root_required: None) -> Iterator[Any]:
    """A fresh namespace joined by a veth pair, unique per test."""
    yield from _veth(quiet=False)


class AgentProcess:
    """``hdrlog agent`` as a child process; its stderr is collected as it comes."""

    def __init__(self, proc: subprocess.Popen[str], iface: str) -> None:
        self.proc = proc
        self.iface = iface
        self._err: list[str] = []
        self._out: list[str] = []
        self._readers = [threading.Thread(target=self._collect, args=(proc.stderr, self._err), daemon=True),
                         threading.Thread(target=self._collect, args=(proc.stdout, self._out), daemon=True)]
        for r in self._readers:
            r.start()

    @staticmethod
    def _collect(pipe: Any, into: list[str]) -> None:
        for line in pipe:
            into.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def records(self) -> list[dict[str, Any]]:
        """The JSON records printed so far (``--stdout`` mode)."""
        return [json.loads(line) for line in list(self._out) if line.startswith("{")]

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self._err) if line.startswith('{"ts"')]

    @property
    def url(self) -> str:
        """The agent's local HTTP server, from its start-up log line."""
        for line in self.log_lines():
            if line["msg"].startswith("serving /metrics"):
                return str(line["msg"].rsplit(" ", 1)[1])
        raise AssertionError(f"the agent logged no server address:\n{self.stderr}")

    def status(self) -> dict[str, Any]:
        import httpx2

        return dict(httpx2.get(self.url + "/api/v1/status", timeout=5).json())

    def our_filters(self) -> list[Any]:
        from producer.capture.tc import TcHooks

        with TcHooks() as tc:
            return tc.ours(tc.ifindex(self.iface))

    def wait_attached(self, deadline_s: float = 60) -> None:
        """Until the agent says it is capturing (after attaching every hook)."""

        def attached() -> bool:
            if self.proc.poll() is not None:
                self._join()
                raise AssertionError(f"agent exited early:\n{self.stderr}")
            return any('"capturing on' in line for line in self._err)

        wait_for(attached, deadline_s, "the agent to attach")

    def _join(self) -> None:
        for r in self._readers:
            r.join(30)

    def wait_exit(self, timeout: float = 120) -> tuple[str, str]:
        self.proc.wait(timeout)
        self._join()
        self.close()
        return "".join(self._out), self.stderr

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._join()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> tuple[str, str]:
        self.proc.send_signal(sig)
        return self.wait_exit(timeout)


def summary_of(stderr: str) -> dict[str, Any]:
    """The agent's exit summary; every drop in it must be a registered, named reason."""
    from producer.telemetry.events import Drop, Stat

    for line in reversed(stderr.splitlines()):
        if line.startswith('{"summary"'):
            summary = dict(json.loads(line)["summary"])
            named = {d.value for d in Drop} | {s.value for s in Stat}
            assert set(summary["agent"]) == named, f"counters outside the typed set: {set(summary['agent']) ^ named}"
            return summary
    raise AssertionError(f"no summary line in agent stderr:\n{stderr}")


@pytest.fixture
def start_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., AgentProcess]]:
    """``hdrlog agent --iface IFACE ARGS``; unless ARGS say otherwise, with its own state directory
    and its HTTP server on a free loopback port (so agents never share either)."""
    agents: list[AgentProcess] = []

    def start(iface: str, *args: str, env: dict[str, str] | None = None,
              prefix: Sequence[str] = ()) -> AgentProcess:
        """``prefix``: a command the agent runs under (setpriv, for least privilege)."""
        extra: list[str] = []
        if "--state-dir" not in args:
            extra += ["--state-dir", str(tmp_path_factory.mktemp("state"))]
        if "--listen" not in args:
            extra += ["--listen", "127.0.0.1:0"]
        proc = subprocess.Popen([*prefix, *HDRLOG, "--log-format", "json", "agent", "--iface", iface, *args, *extra],
                                cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **(env or {})})
        agents.append(AgentProcess(proc, iface))
        return agents[-1]

    yield start
    for agent in agents:
        agent.close()


def run_hdrlog(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HDRLOG, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def _veth(quiet: bool) -> Iterator[Any]:
    from producer.netns import VethNamespace

    n = f"{os.getpid() % 1000}{next(_ids)}"
    net = VethNamespace(ns=f"hlt-{n}", host_if=f"hlt{n}a", peer_if=f"hlt{n}b",
                        host_ip="10.204.0.1", peer_ip="10.204.0.2",
                        host_ip6="fd00:204::1", peer_ip6="fd00:204::2")
    net.create(quiet=quiet)
    try:
        yield net
    finally:
        net.destroy()


@pytest.fixture
def quiet_veth(root_required: None) -> Iterator[Any]:
    """Like ``veth`` but IPv4 only with static neighbours: only what a test sends crosses it."""
    yield from _veth(quiet=True)


def send_udp(net: Any, dst: str, dport: int, count: int, sport: int = 40000) -> None:
    """``count`` UDP datagrams from the peer namespace to ``dst:dport``."""
    out, err = net.udp(dst, dport, count=count, sport=sport).communicate(timeout=120)
    assert int(out) == count, err


@pytest.fixture
def udp_sinks() -> Iterator[Callable[..., None]]:
    """Bind UDP ports in this namespace (never read), so no ICMP port-unreachable answers."""
    import socket

    socks: list[socket.socket] = []

    def bind(*ports: int) -> None:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", port))
            socks.append(s)

    yield bind
    for s in socks:
        s.close()


def read_topic(bootstrap_servers: str, topic: str, settle_s: float = 2.0, deadline_s: float = 60) -> list[Any]:
    """Every message of ``topic`` from the beginning, read until nothing new came for ``settle_s``."""
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"hdrlog-test-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
        msgs: list[Any] = []
        end = time.monotonic() + deadline_s
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle_s:
            got = consumer.consume(1000, timeout=0.5)
            for m in got:
                assert m.error() is None, m.error()
            if got:
                msgs.extend(got)
                quiet_since = time.monotonic()
            assert time.monotonic() < end, f"{topic} kept growing for {deadline_s}s"
        return msgs
    finally:
        consumer.close()


def expand(registry_url: str, msgs: list[Any]) -> list[dict[str, Any]]:
    """The header records of ``msgs`` (both shapes), each with its message's partition and offset."""
    from producer.consumer.decoding import MessageDecoder
    from producer.serialize.registry import Registry

    out: list[dict[str, Any]] = []
    with Registry(registry_url) as registry:
        decoder = MessageDecoder(registry)
        for m in msgs:
            for r in decoder.records(m.value()):
                r["_partition"], r["_offset"] = m.partition(), m.offset()
                out.append(r)
    return out


def reconcile(records: list[dict[str, Any]], emitted: dict[str, int], dropped: int = 0) -> dict[str, int]:
    """Check the records against each capture's kernel ``emitted`` count, exactly.

    Per capture and CPU the kernel's sequence runs 0, 1, 2, ... without a gap, so with nothing
    ``dropped`` the unique identities of a capture must be exactly ``emitted[capture]`` gapless
    runs; with drops, what is missing must equal them.  A repeated identity is a re-delivery
    and must be the same record.  Per agent instance, within the partition, first occurrences
    of message sequence numbers increase.  Returns counts.
    """
    first: dict[tuple[str, int, int], dict[str, Any]] = {}
    duplicates = 0
    for r in records:
        ident = (r["capture_id"], r["capture_cpu"], r["capture_seq"])
        seen = first.get(ident)
        if seen is None:
            first[ident] = r
            continue
        duplicates += 1
        same = {k: v for k, v in r.items() if not k.startswith("_") and k not in ("agent_instance", "sequence")}
        assert same == {k: v for k, v in seen.items() if k in same}, f"a repeated identity {ident} differs"
    assert {c for c, _, _ in first} <= set(emitted), f"records of unknown captures: {set(c for c, _, _ in first)}"
    missing = 0
    for capture, n in emitted.items():
        per_cpu: dict[int, list[int]] = {}
        for c, cpu, seq in first:
            if c == capture:
                per_cpu.setdefault(cpu, []).append(seq)
        got = sum(len(v) for v in per_cpu.values())
        missing += n - got
        if dropped == 0:
            assert got == n, f"capture {capture}: {got} unique records in Kafka, the kernel emitted {n}"
            for cpu, seqs in per_cpu.items():
                assert sorted(seqs) == list(range(len(seqs))), f"capture {capture} cpu {cpu}: a gap in the sequence"
    assert missing == dropped, f"{missing} records missing from Kafka, {dropped} counted as dropped"
    seen: dict[tuple[int, str], set[int]] = {}
    last: dict[tuple[int, str], int] = {}
    for r in sorted(records, key=lambda r: (r["_partition"], r["_offset"])):
        key = (r["_partition"], r["agent_instance"])
        if r["sequence"] in seen.setdefault(key, set()):
            continue  # the same message's other records, or a re-delivery
        if key in last and r["sequence"] <= last[key]:
            order = []
            for x in sorted(records, key=lambda x: (x["_partition"], x["_offset"])):
                if not order or order[-1] != (x["_offset"], x["sequence"]):
                    order.append((x["_offset"], x["sequence"]))
            raise AssertionError(f"instance {r['agent_instance']}: sequence {r['sequence']} first seen after "
                                 f"{last[key]}; (offset, sequence) in the partition: {order}")
        seen[key].add(r["sequence"])
        last[key] = r["sequence"]
    return {"unique": len(first), "duplicates": duplicates, "records": len(records)}
