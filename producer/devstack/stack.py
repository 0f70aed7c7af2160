"""The local development stack: a single-node Kafka (KRaft) and Apicurio Registry; on request
(``up --opensearch``, ``up --connect``) an OpenSearch node and a Kafka Connect worker.

Both run as detached local processes bound to 127.0.0.1, fetched once from
Maven Central (Maven's own cache stays in ~/.m2), with their state, pid files
and logs under ``<cache_dir>/stack``.  The registry stores its schemas in Kafka
(``kafkasql``), so a restart keeps schemas, their ids and topic data alike.
Used by ``hdrlog stack up|down|status|restart``, ``make run`` and the test
suite's session fixture.

Every operation is idempotent: ``up`` reuses what is already running (checked
by pid *and* command line, so a reused pid is not mistaken for ours), and
``up``/``down`` take a file lock so two callers (a test session and a shell)
do not both start a service.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from producer.devstack import connect, jvm, kafka, opensearch, registry, tlsproxy
from producer.devstack.fetch import Fetcher
from producer.devstack.procs import POLL_S, Daemon, alive, port_holder
from producer.devstack.secure import SecureFiles
from producer.devstack.secure import ensure as ensure_secure
from producer.errors import ConfigError, StackError
from producer.publish.kafka import speaks_tls

COMPATIBILITY_LEVELS = frozenset({"NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
                                  "FULL", "FULL_TRANSITIVE"})
ACTIONS = ("up", "down", "status", "restart")
EXIT_NOT_RUNNING = 3  # as LSB init scripts answer `status` for a stopped service


def _to_stderr(line: str) -> None:
    print(f"stack: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class StackSettings:
    """Where the stack keeps its files and which ports it binds (all on 127.0.0.1)."""

    cache_dir: Path  # env HDRLOG_CACHE_DIR, default ~/.cache/hdrlog; the stack lives in <cache_dir>/stack
    kafka_port: int = 9092  # env HDRLOG_STACK_KAFKA_PORT: clients' bootstrap port
    controller_port: int = 9093  # env HDRLOG_STACK_CONTROLLER_PORT: KRaft controller listener
    registry_port: int = 8081  # env HDRLOG_STACK_REGISTRY_PORT: registry HTTP API
    # env HDRLOG_STACK_REGISTRY_MANAGEMENT_PORT: registry health/metrics; Quarkus's 9000 is a popular port
    registry_management_port: int = 9011
    kafka_version: str = "4.1.1"
    apicurio_version: str = "3.3.3"
    compatibility: str = "BACKWARD"  # the registry's global compatibility rule
    java21: Path | None = None  # env HDRLOG_JAVA21: java for the registry; default: found under /usr/lib/jvm
    opensearch_port: int = 9200  # env HDRLOG_STACK_OPENSEARCH_PORT: OpenSearch's HTTP API (up --opensearch)
    connect_port: int = 8083  # env HDRLOG_STACK_CONNECT_PORT: Kafka Connect's REST API (up --connect)
    secure_port: int = 9094  # env HDRLOG_STACK_SECURE_PORT: Kafka's SASL_SSL listener (up --secure)
    mtls_port: int = 9095  # env HDRLOG_STACK_MTLS_PORT: Kafka's TLS listener that requires a client certificate
    # env HDRLOG_STACK_SECURE_REGISTRY_PORT: the registry over HTTPS with basic auth (up --secure)
    secure_registry_port: int = 8444
    opensearch_version: str = "3.4.0"
    connect_converter_version: str = "2.6.13.Final"  # io.apicurio:apicurio-registry-utils-converter

    def __post_init__(self) -> None:
        ports = {"kafka_port": self.kafka_port, "controller_port": self.controller_port,
                 "registry_port": self.registry_port, "registry_management_port": self.registry_management_port,
                 "opensearch_port": self.opensearch_port, "connect_port": self.connect_port,
                 "secure_port": self.secure_port, "mtls_port": self.mtls_port,
                 "secure_registry_port": self.secure_registry_port}
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ConfigError(f"stack setting {name}: {port} is not a TCP port")
        if len(set(ports.values())) != len(ports):
            raise ConfigError(f"stack settings: the ports must differ, got {ports}")
        if self.compatibility not in COMPATIBILITY_LEVELS:
            raise ConfigError(f"stack setting compatibility: {self.compatibility!r} is not one of "
                              f"{', '.join(sorted(COMPATIBILITY_LEVELS))}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackSettings:
        """Settings from the environment (``os.environ`` unless ``env`` is given); unset means default."""
        env = os.environ if env is None else env

        def port(var: str, default: int) -> int:
            text = env.get(var, "").strip()
            if not text:
                return default
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise ConfigError(f"{var}: {text!r} is not a TCP port number")
            return int(text)

        cache = env.get("HDRLOG_CACHE_DIR", "").strip()
        java21 = env.get("HDRLOG_JAVA21", "").strip()
        return cls(
            cache_dir=Path(cache).expanduser() if cache else Path.home() / ".cache" / "hdrlog",
            kafka_port=port("HDRLOG_STACK_KAFKA_PORT", 9092),
            controller_port=port("HDRLOG_STACK_CONTROLLER_PORT", 9093),
            registry_port=port("HDRLOG_STACK_REGISTRY_PORT", 8081),
            registry_management_port=port("HDRLOG_STACK_REGISTRY_MANAGEMENT_PORT", 9011),
            java21=Path(java21).expanduser() if java21 else None,
            opensearch_port=port("HDRLOG_STACK_OPENSEARCH_PORT", 9200),
            connect_port=port("HDRLOG_STACK_CONNECT_PORT", 8083),
            secure_port=port("HDRLOG_STACK_SECURE_PORT", 9094),
            mtls_port=port("HDRLOG_STACK_MTLS_PORT", 9095),
            secure_registry_port=port("HDRLOG_STACK_SECURE_REGISTRY_PORT", 8444),
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def secure_bootstrap_servers(self) -> str:
        """The SASL_SSL listener (``up --secure``)."""
        return f"127.0.0.1:{self.secure_port}"

    @property
    def mtls_bootstrap_servers(self) -> str:
        """The TLS listener that requires a client certificate the stack's CA signed (``up --secure``)."""
        return f"127.0.0.1:{self.mtls_port}"

    @property
    def registry_url(self) -> str:
        """The Confluent-compatible API, what confluent-kafka's SchemaRegistryClient expects."""
        return f"http://127.0.0.1:{self.registry_port}/apis/ccompat/v7"

    @property
    def secure_registry_url(self) -> str:
        """The same registry over HTTPS with basic auth (``up --secure``: tlsproxy.py)."""
        return f"https://127.0.0.1:{self.secure_registry_port}/apis/ccompat/v7"

    @property
    def registry_management_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_management_port}"

    @property
    def opensearch_url(self) -> str:
        return f"http://127.0.0.1:{self.opensearch_port}"

    @property
    def connect_url(self) -> str:
        return f"http://127.0.0.1:{self.connect_port}"

    @property
    def root(self) -> Path:
        return self.cache_dir / "stack"


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    """One service as ``status`` sees it: running means our process is alive (not that it answers)."""

    name: str
    pid: int | None
    address: str
    log: Path

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True, slots=True)
class StackStatus:
    """What ``hdrlog stack status`` prints."""

    kafka: ComponentStatus
    registry: ComponentStatus
    bootstrap_servers: str
    registry_url: str
    opensearch: ComponentStatus | None = None  # optional services: shown when running
    connect: ComponentStatus | None = None
    registry_tls: ComponentStatus | None = None  # up --secure: the registry over HTTPS with basic auth
    secure: str | None = None  # the SASL_SSL listener and where its CA and users are (up --secure)

    @property
    def running(self) -> bool:
        """Kafka and the registry run (the optional services are not required)."""
        return self.kafka.running and self.registry.running

    def render(self) -> str:
        lines = []
        optional = [c for c in (self.registry_tls, self.opensearch, self.connect) if c is not None and c.running]
        for c in (self.kafka, self.registry, *optional):
            state = f"running (pid {c.pid})" if c.running else "stopped"
            lines.append(f"{c.name:<12} {state:<20} {c.address:<24} log {c.log}")
        lines.append(f"bootstrap servers: {self.bootstrap_servers}")
        lines.append(f"schema registry:   {self.registry_url}")
        if self.secure is not None:
            lines.append(f"secure listener:   {self.secure}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Every path under ``<cache_dir>/stack``."""

    root: Path
    kafka_libs: Path
    kafka_data: Path
    kafka_properties: Path
    kafka_log4j2: Path
    apicurio: Path
    lock: Path
    connect_libs: Path
    connect_properties: Path
    connect_log4j2: Path
    connect_offsets: Path
    opensearch: Path  # the distribution, its data and logs (opensearch.home_root)
    registry_tls_conf: Path  # nginx's configuration (tlsproxy.py)

    @classmethod
    def of(cls, s: StackSettings) -> _Layout:
        # Absolute: the services run with the stack directory as their cwd, and the paths
        # in their command lines are how a later `status` recognises them.
        root = s.root.absolute()
        return cls(root=root, kafka_libs=root / f"kafka-{s.kafka_version}-libs", kafka_data=root / "kafka-data",
                   kafka_properties=root / "kafka.properties", kafka_log4j2=root / "kafka-log4j2.properties",
                   apicurio=root / f"apicurio-{s.apicurio_version}", lock=root / "lock",
                   connect_libs=root / f"connect-{s.kafka_version}-libs",
                   connect_properties=root / "connect-worker.properties",
                   connect_log4j2=root / "connect-log4j2.properties", connect_offsets=root / "connect.offsets",
                   opensearch=opensearch.home_root(root, s.opensearch_version),
                   registry_tls_conf=root / "registry-tls.nginx.conf")


class LocalStack:
    """Start, stop and inspect the local Kafka and registry processes.

    ``up`` and ``down`` block until the services answer or are gone, within their
    deadlines, and raise StackError with a one-line reason otherwise.
    """

    def __init__(self, settings: StackSettings, *, progress: Callable[[str], None] = _to_stderr) -> None:
        self.settings = settings
        self._say = progress
        self._paths = _Layout.of(settings)
        root = self._paths.root
        # The JVM's own stdout/stderr (a crash before logging starts) goes to kafka.out; log4j2 writes kafka.log.
        self._kafka = Daemon("Kafka", root / "kafka.pid", root / "kafka.out",
                             (kafka.MAIN_CLASS, str(self._paths.kafka_properties)))
        self._registry = Daemon("the schema registry", root / "registry.pid", root / "registry.log",
                                (f"-Dhdrlog.stack={root}",))
        self._kafka_log = root / "kafka.log"
        self._opensearch = Daemon("OpenSearch", root / "opensearch.pid", root / "opensearch.out",
                                  (opensearch.MAIN_CLASS, f"-Enode.attr.hdrlog_stack={root}"))
        self._connect_log = root / "connect.log"  # log4j2's; the JVM's own output goes to connect.out
        self._connect = Daemon("Kafka Connect", root / "connect.pid", root / "connect.out",
                               (connect.MAIN_CLASS, str(self._paths.connect_properties)))
        self._registry_tls = Daemon("the registry's TLS proxy", root / "registry-tls.pid", root / "registry-tls.out",
                                    ("-c", str(self._paths.registry_tls_conf)), retitled=True)
        self.secure_files = SecureFiles(root / "secure")
        self._secure_on = root / "secure" / "enabled"  # up --secure leaves it; every later start keeps the mode

    # -- inspection ----------------------------------------------------------------

    def status(self) -> StackStatus:
        s = self.settings
        return StackStatus(
            kafka=ComponentStatus("kafka", self._kafka.pid(), s.bootstrap_servers, self._kafka_log),
            registry=ComponentStatus("registry", self._registry.pid(), f"127.0.0.1:{s.registry_port}",
                                     self._registry.log),
            bootstrap_servers=s.bootstrap_servers, registry_url=s.registry_url,
            opensearch=ComponentStatus("opensearch", self._opensearch.pid(), f"127.0.0.1:{s.opensearch_port}",
                                       self._opensearch.log),
            connect=ComponentStatus("connect", self._connect.pid(), f"127.0.0.1:{s.connect_port}",
                                    self._connect_log),
            registry_tls=ComponentStatus("registry-tls", self._registry_tls.pid(),
                                         f"127.0.0.1:{s.secure_registry_port}", self._registry_tls.log),
            secure=(f"SASL_SSL {s.secure_bootstrap_servers} (SCRAM-SHA-512, PLAIN), mTLS "
                    f"{s.mtls_bootstrap_servers} (client certificate required), the registry at "
                    f"{s.secure_registry_url} (basic auth); CA, client certificate and users in "
                    f"{self.secure_files.root}") if self._secure_on.exists() else None)

    # -- up ------------------------------------------------------------------------

    def up(self, timeout: float = 300.0, *, with_opensearch: bool = False, with_connect: bool = False,
           secure: bool | None = None) -> StackStatus:
        """Fetch (once), format (once), start what is not running, and wait until both answer
        (and OpenSearch / Kafka Connect, when asked for).

        ``timeout`` bounds starting and waiting; the one-time download is not
        counted, since a slow mirror is not a failed start.  The registry's
        global compatibility is (re)set to ``settings.compatibility`` every time.
        ``secure``: True adds Kafka's SASL_SSL listener (secure.py; a running
        Kafka without it is restarted), False drops it at the next start, None
        keeps the mode of the last ``up``.
        """
        with self._locked(time.monotonic() + timeout):
            if secure:
                ensure_secure(self.secure_files.root)
                self._secure_on.touch()
            elif secure is False:
                self._secure_on.unlink(missing_ok=True)
            want_secure = self._secure_on.exists()
            if want_secure:
                ensure_secure(self.secure_files.root)  # (made again if a file went missing)
            before = self.status()
            if want_secure and before.kafka.running and not self._kafka_is_current():
                self._say("restarting Kafka with its SASL_SSL listener as this version sets it up")
                self._kafka.stop(timeout)
                before = self.status()
            kafka_java, registry_java = self._preflight(before)
            fetcher = Fetcher(self._paths.root, self._say)
            if kafka_java is not None:
                fetcher.kafka(self.settings.kafka_version, self._paths.kafka_libs)
            if registry_java is not None:
                fetcher.apicurio(self.settings.apicurio_version, self._paths.apicurio)

            deadline = time.monotonic() + timeout
            kafka_pid = before.kafka.pid if kafka_java is None else self._start_kafka(kafka_java, want_secure)
            # kafka.out first: it is fresh for each start, and a JVM that dies early only writes there.
            self._wait(kafka.KafkaProbe(self.settings.bootstrap_servers, self.settings.kafka_port), kafka_pid,
                       "Kafka", self._kafka_log, (self._kafka.log, self._kafka_log), deadline)
            if want_secure:
                kafka.add_scram_users(self.settings.bootstrap_servers, self.secure_files)
                self._wait(lambda: speaks_tls(self.settings.secure_bootstrap_servers), kafka_pid,
                           "Kafka's SASL_SSL listener", self._kafka_log, (self._kafka_log,), deadline)
                self._wait(lambda: speaks_tls(self.settings.mtls_bootstrap_servers), kafka_pid,
                           "Kafka's mTLS listener", self._kafka_log, (self._kafka_log,), deadline)
            client = registry.RegistryClient(api_url=self.settings.registry_url,
                                             management_url=self.settings.registry_management_url)
            registry_pid = before.registry.pid if registry_java is None else self._start_registry(registry_java)
            self._wait(client.ready, registry_pid, "the schema registry", self._registry.log, (self._registry.log,),
                       deadline)
            client.set_compatibility(self.settings.compatibility)
            if want_secure:
                self._up_registry_tls(before, deadline)
            elif before.registry_tls is not None and before.registry_tls.running:
                self._say(f"stopping {self._registry_tls.name}")
                self._registry_tls.stop(timeout)
            if with_opensearch:
                self._up_opensearch(fetcher, before, deadline)
            if with_connect:
                self._up_connect(fetcher, before, deadline)
            after = self.status()
        if not before.running:
            self._say(f"up: Kafka at {after.bootstrap_servers}, registry at {after.registry_url}")
        return after

    def _up_registry_tls(self, before: StackStatus, deadline: float) -> None:
        s, p = self.settings, self._paths
        pid = before.registry_tls.pid if before.registry_tls is not None else None
        if pid is None:
            self._free(s.secure_registry_port, self._registry_tls.name)
            binary = tlsproxy.nginx()
            (p.root / "registry-tls-tmp").mkdir(mode=0o700, exist_ok=True)
            p.registry_tls_conf.write_text(tlsproxy.config(port=s.secure_registry_port,
                                                           upstream_port=s.registry_port,
                                                           files=self.secure_files, workdir=p.root))
            _rotate(self._registry_tls.log)
            self._say(f"starting the registry's TLS proxy (nginx) on {s.secure_registry_url}")
            pid = self._registry_tls.start(tlsproxy.argv(binary, p.registry_tls_conf, p.root), env=os.environ,
                                           cwd=p.root)
        log = p.root / "registry-tls.log"
        self._wait(tlsproxy.ProxyProbe(s.secure_registry_url, self.secure_files), pid, self._registry_tls.name,
                   log, (self._registry_tls.log, log), deadline)

    def _up_opensearch(self, fetcher: Fetcher, before: StackStatus, deadline: float) -> None:
        s, p = self.settings, self._paths
        pid = before.opensearch.pid if before.opensearch is not None else None
        if pid is None:
            self._free(s.opensearch_port, "OpenSearch")
            java = jvm.find_java(21, prefer=s.java21, purpose=f"OpenSearch {s.opensearch_version}")
            owner = opensearch.SERVICE_UID if os.geteuid() == 0 else None
            opensearch.check_home(p.opensearch)
            fetcher.opensearch(s.opensearch_version, p.opensearch, owner)
            home = p.opensearch / f"opensearch-{s.opensearch_version}"
            data, logs = p.opensearch / "data", p.opensearch / "logs"
            for d in (data, logs):
                d.mkdir(mode=0o755, exist_ok=True)
                if owner is not None:
                    os.lchown(d, owner, owner)
            self._say(f"starting OpenSearch {s.opensearch_version} on {s.opensearch_url} (about 15 s)")
            _rotate(self._opensearch.log)
            pid = self._opensearch.start(opensearch.argv(home, data, logs, s.opensearch_port, str(p.root)),
                                         env={**os.environ, **opensearch.environment(java.parent.parent, home)},
                                         cwd=p.opensearch)
        self._wait(opensearch.OpenSearchProbe(s.opensearch_url), pid, "OpenSearch", self._opensearch.log,
                   (self._opensearch.log,), deadline)

    def _up_connect(self, fetcher: Fetcher, before: StackStatus, deadline: float) -> None:
        s, p = self.settings, self._paths
        pid = before.connect.pid if before.connect is not None else None
        if pid is None:
            self._free(s.connect_port, "Kafka Connect")
            java = jvm.find_java(17, purpose="Kafka Connect")
            fetcher.connect(s.kafka_version, s.connect_converter_version, p.connect_libs)
            p.connect_properties.write_text(connect.worker_properties(
                bootstrap_servers=s.bootstrap_servers, port=s.connect_port, offsets=p.connect_offsets))
            p.connect_log4j2.write_text(connect.log4j2_config(self._connect_log))
            _rotate(self._connect.log)
            self._say(f"starting Kafka Connect {s.kafka_version} on {s.connect_url} (about 10 s)")
            pid = self._connect.start([*connect.jvm_args(java, p.connect_libs, p.connect_log4j2), connect.MAIN_CLASS,
                                       str(p.connect_properties)], env=os.environ, cwd=p.root)
        self._wait(connect.ConnectProbe(s.connect_url), pid, "Kafka Connect", self._connect_log,
                   (self._connect.log, self._connect_log), deadline)

    @staticmethod
    def _free(port: int, what: str) -> None:
        holder = port_holder(port)
        if holder is not None:
            raise StackError(f"port {port} (for {what}) is already taken by {holder}; stop it or choose "
                             f"another port (HDRLOG_STACK_*_PORT)")

    def _preflight(self, st: StackStatus) -> tuple[Path | None, Path | None]:
        """Java for each service that must be started, checked with its ports before any download."""
        s = self.settings
        wanted: list[tuple[str, int]] = []
        if not st.kafka.running:
            wanted += [("Kafka", s.kafka_port), ("the Kafka controller", s.controller_port)]
            if self._secure_on.exists():
                wanted += [("Kafka's SASL_SSL listener", s.secure_port), ("Kafka's mTLS listener", s.mtls_port)]
        if not st.registry.running:
            wanted += [("the schema registry", s.registry_port),
                       ("the schema registry's management interface", s.registry_management_port)]
        for what, port in wanted:
            self._free(port, what)
        kafka_java = None if st.kafka.running else jvm.find_java(17, purpose="Kafka")
        registry_java = None if st.registry.running else jvm.find_java(
            21, prefer=s.java21, purpose=f"Apicurio Registry {s.apicurio_version}")
        return kafka_java, registry_java

    def _kafka_properties(self, secure: bool) -> str:
        s, p = self.settings, self._paths
        return kafka.server_properties(kafka_port=s.kafka_port, controller_port=s.controller_port,
                                       data_dir=p.kafka_data,
                                       secure=(s.secure_port, s.mtls_port, self.secure_files) if secure else None)

    def _kafka_is_current(self) -> bool:
        """Whether the running Kafka was started with the secure listener as it is set up now (its
        properties are written at each start)."""
        try:
            return self._paths.kafka_properties.read_text() == self._kafka_properties(True)
        except OSError:
            return False

    def _start_kafka(self, java: Path, secure: bool) -> int:
        s, p = self.settings, self._paths
        fd = os.open(p.kafka_properties, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # PLAIN's passwords
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._kafka_properties(secure))
        p.kafka_log4j2.write_text(kafka.log4j2_config(self._kafka_log))
        args = kafka.jvm_args(java, p.kafka_libs, p.kafka_log4j2)
        if not kafka.is_formatted(p.kafka_data):
            self._say(f"formatting Kafka storage in {p.kafka_data}")
            kafka.format_storage(args, p.kafka_properties, p.kafka_data)
        self._say(f"starting Kafka {s.kafka_version} on {s.bootstrap_servers}")
        _rotate(self._kafka.log)
        return self._kafka.start([*args, kafka.MAIN_CLASS, str(p.kafka_properties)], env=os.environ, cwd=p.root)

    def _start_registry(self, java: Path) -> int:
        s, p = self.settings, self._paths
        jar = registry.run_jar(p.apicurio)
        env = {**os.environ, **registry.environment(bootstrap_servers=s.bootstrap_servers,
                                                    http_port=s.registry_port,
                                                    management_port=s.registry_management_port)}
        self._say(f"starting Apicurio Registry {s.apicurio_version} on http://127.0.0.1:{s.registry_port} "
                  f"(about 25 s)")
        _rotate(self._registry.log)
        return self._registry.start(registry.jvm_args(java, jar, tag=str(p.root), compatibility=s.compatibility),
                                    env=env, cwd=jar.parent)

    def _wait(self, ready: Callable[[], bool], pid: int | None, what: str, log: Path, hints: tuple[Path, ...],
              deadline: float) -> None:
        """Poll ``ready`` until it holds; fail early if the process dies, or at the deadline."""
        while not ready():
            if pid is None or not alive(pid):
                raise StackError(f"{what} exited during start-up: {_hint(hints)} (see {log})")
            if time.monotonic() >= deadline:
                raise StackError(f"{what} did not become ready in time (see {log})")
            time.sleep(POLL_S)

    # -- down ----------------------------------------------------------------------

    def down(self, timeout: float = 60.0) -> None:
        """Stop Kafka Connect and OpenSearch, the registry (it writes to Kafka), then Kafka: SIGTERM,
        SIGKILL after ``timeout``."""
        with self._locked(time.monotonic() + timeout):
            st = self.status()
            order = ((self._registry_tls, st.registry_tls is not None and st.registry_tls.running),
                     (self._connect, st.connect is not None and st.connect.running),
                     (self._opensearch, st.opensearch is not None and st.opensearch.running),
                     (self._registry, st.registry.running), (self._kafka, st.kafka.running))
            for daemon, running in order:
                if running:
                    self._say(f"stopping {daemon.name}")
                daemon.stop(timeout)

    def stop_optional(self, *, opensearch_too: bool = False, connect_too: bool = False,
                      timeout: float = 60.0) -> None:
        """Stop OpenSearch and/or Kafka Connect, leaving Kafka and the registry running."""
        with self._locked(time.monotonic() + timeout):
            for daemon, wanted in ((self._connect, connect_too), (self._opensearch, opensearch_too)):
                if wanted and daemon.pid() is not None:
                    self._say(f"stopping {daemon.name}")
                    daemon.stop(timeout)

    def restart(self, timeout: float = 300.0, *, with_opensearch: bool = False,
                with_connect: bool = False, secure: bool | None = None) -> StackStatus:
        """Down, then up again with the optional services that were running (or are asked for)."""
        st = self.status()
        with_opensearch = with_opensearch or (st.opensearch is not None and st.opensearch.running)
        with_connect = with_connect or (st.connect is not None and st.connect.running)
        self.down()
        return self.up(timeout, with_opensearch=with_opensearch, with_connect=with_connect, secure=secure)

    # -- helpers -------------------------------------------------------------------

    @contextmanager
    def _locked(self, deadline: float) -> Iterator[None]:
        """One ``up``/``down`` at a time per stack directory (flock: released even if we crash)."""
        lock = self._paths.lock
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StackError(f"another stack command is still running (it holds {lock})") from None
                    time.sleep(POLL_S)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _rotate(log: Path) -> None:
    """Keep the previous run's output as ``<log>.1``; each start begins a fresh file."""
    if log.exists() and log.stat().st_size > 0:
        log.replace(log.with_name(log.name + ".1"))


def _hint(logs: tuple[Path, ...]) -> str:
    """The last line that looks like an error in any of ``logs`` (the most recent output), for a one-line message."""
    for log in logs:
        try:
            with log.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
                tail = f.read().decode(errors="replace").splitlines()
        except OSError:
            continue
        errors = [ln.strip() for ln in tail if any(w in ln for w in ("ERROR", "Exception", "Error:"))]
        if errors:
            return errors[-1][:200]
    return "no error in its log"


def run_stack_command(action: str, settings: StackSettings, *, with_opensearch: bool = False,
                      with_connect: bool = False, secure: bool | None = None) -> int:
    """``hdrlog stack up|down|status|restart``: print the resulting status and return an exit code.

    0 on success; for ``status``, 3 when either service is stopped.  StackError
    propagates: the CLI prints it as one line.
    """
    stack = LocalStack(settings)
    if action == "up":
        status = stack.up(with_opensearch=with_opensearch, with_connect=with_connect, secure=secure)
    elif action == "down":
        stack.down()
        status = stack.status()
    elif action == "restart":
        status = stack.restart(with_opensearch=with_opensearch, with_connect=with_connect, secure=secure)
    elif action == "status":
        status = stack.status()
    else:
        raise ConfigError(f"stack action {action!r}: expected one of {', '.join(ACTIONS)}")
    print(status.render())
    return EXIT_NOT_RUNNING if action == "status" and not status.running else 0
