"""The local development stack: single-node Kafka (KRaft) + Apicurio Registry.

Both run as detached local processes bound to 127.0.0.1, fetched from Maven
Central with Maven (its cache stays in ~/.m2), with state, pid files and logs
under ``<cache_dir>/stack``.  The registry stores its schemas in Kafka
(``kafkasql``), so a restart keeps schemas and topic data alike.  Used by
``hdrlog stack``, ``make run`` and the test suite's session fixture.
"""

from __future__ import annotations

import base64
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from producer.errors import StackError

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.hdrlog</groupId><artifactId>devstack-kafka</artifactId><version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""


def _default_progress(line: str) -> None:
    print(f"stack: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class StackSettings:
    """Where the stack lives and which ports it binds (all on 127.0.0.1)."""

    cache_dir: Path  # env HDRLOG_CACHE_DIR, default ~/.cache/hdrlog
    kafka_port: int = 9092  # env HDRLOG_STACK_KAFKA_PORT
    controller_port: int = 9093  # env HDRLOG_STACK_CONTROLLER_PORT
    registry_port: int = 8081  # env HDRLOG_STACK_REGISTRY_PORT
    registry_management_port: int = 9011  # env HDRLOG_STACK_REGISTRY_MANAGEMENT_PORT
    kafka_version: str = "4.1.1"
    apicurio_version: str = "3.3.3"
    compatibility: str = "BACKWARD"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackSettings:
        env = os.environ if env is None else env
        cache = Path(env.get("HDRLOG_CACHE_DIR") or Path.home() / ".cache" / "hdrlog")

        def port(var: str, default: int) -> int:
            text = env.get(var)
            if text is None:
                return default
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise StackError(f"invalid value for {var}: {text!r} (expected a port number)")
            return int(text)

        return cls(
            cache_dir=cache,
            kafka_port=port("HDRLOG_STACK_KAFKA_PORT", 9092),
            controller_port=port("HDRLOG_STACK_CONTROLLER_PORT", 9093),
            registry_port=port("HDRLOG_STACK_REGISTRY_PORT", 8081),
            registry_management_port=port("HDRLOG_STACK_REGISTRY_MANAGEMENT_PORT", 9011),
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}/apis/ccompat/v7"

    @property
    def root(self) -> Path:
        return self.cache_dir / "stack"


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    name: str
    pid: int | None
    log: Path

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True, slots=True)
class StackStatus:
    kafka: ComponentStatus
    registry: ComponentStatus
    bootstrap_servers: str
    registry_url: str

    @property
    def running(self) -> bool:
        return self.kafka.running and self.registry.running

    def render(self) -> str:
        lines = []
        for c in (self.kafka, self.registry):
            state = f"running (pid {c.pid})" if c.running else "stopped"
            lines.append(f"{c.name:<9} {state:<22} log {c.log}")
        lines.append(f"bootstrap servers  {self.bootstrap_servers}")
        lines.append(f"schema registry    {self.registry_url}")
        return "\n".join(lines)


def _java21() -> str:
    """A Java 21+ binary: $HDRLOG_JAVA21, else the newest /usr/lib/jvm/temurin-*."""
    override = os.environ.get("HDRLOG_JAVA21")
    if override:
        return override
    found = []
    for home in glob.glob("/usr/lib/jvm/temurin-*"):
        m = re.match(r"temurin-(\d+)", Path(home).name)
        if m and int(m.group(1)) >= 21 and Path(home, "bin", "java").exists():
            found.append((int(m.group(1)), str(Path(home, "bin", "java"))))
    if not found:
        raise StackError("the schema registry needs Java 21 or later: install a Temurin JDK under "
                         "/usr/lib/jvm or set HDRLOG_JAVA21 to a java binary")
    return max(found)[1]


def _running(pidfile: Path) -> bool:
    """The process in ``pidfile`` exists and is not a zombie (a just-started one counts)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class LocalStack:
    """Start, stop and inspect the local Kafka and registry processes."""

    def __init__(self, settings: StackSettings, *,
                 progress: Callable[[str], None] = _default_progress) -> None:
        self.settings = settings
        self._say = progress
        root = settings.root
        self._libs = root / f"kafka-{settings.kafka_version}-libs"
        self._apicurio = root / f"apicurio-{settings.apicurio_version}"
        self._kafka_pid = root / "kafka.pid"
        self._registry_pid = root / "registry.pid"
        self._kafka_log = root / "kafka.log"
        self._registry_log = root / "registry.log"

    # -- status --------------------------------------------------------------

    def _alive(self, pidfile: Path, marker: str) -> int | None:
        """The pid in ``pidfile`` if that process is alive and is ours (not a reused pid)."""
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            return None
        return pid if marker in cmdline and str(self.settings.root) in cmdline else None

    def status(self) -> StackStatus:
        s = self.settings
        return StackStatus(
            ComponentStatus("kafka", self._alive(self._kafka_pid, "kafka.Kafka"), self._kafka_log),
            ComponentStatus("registry", self._alive(self._registry_pid, "quarkus-run.jar"),
                            self._registry_log),
            s.bootstrap_servers, s.registry_url)

    # -- fetch ---------------------------------------------------------------

    def _mvn(self, args: list[str], cwd: Path, what: str) -> None:
        if shutil.which("mvn") is None:
            raise StackError("Maven (mvn) is not installed: run scripts/setup.sh")
        log = self.settings.root / "maven.log"
        with log.open("a") as out:
            res = subprocess.run(["mvn", "-B", "-q", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                 check=False)
        if res.returncode != 0:
            raise StackError(f"fetching {what} from Maven Central failed (see {log})")

    def fetch(self) -> None:
        s = self.settings
        s.root.mkdir(parents=True, exist_ok=True)
        if not (self._libs / ".complete").exists():
            self._say(f"fetching Kafka {s.kafka_version} from Maven Central")
            (s.root / "pom.xml").write_text(_POM.format(kafka=s.kafka_version))
            shutil.rmtree(self._libs, ignore_errors=True)
            self._mvn(["dependency:copy-dependencies", f"-DoutputDirectory={self._libs}",
                       "-DincludeScope=runtime"], s.root, f"Kafka {s.kafka_version}")
            (self._libs / ".complete").touch()
        if not (self._apicurio / ".complete").exists():
            self._say(f"fetching Apicurio Registry {s.apicurio_version} from Maven Central")
            dl = s.root / "download"
            self._mvn(["dependency:copy",
                       f"-Dartifact=io.apicurio:apicurio-registry-app:{s.apicurio_version}:tar.gz:all",
                       f"-DoutputDirectory={dl}"], s.root, f"Apicurio Registry {s.apicurio_version}")
            archive = dl / f"apicurio-registry-app-{s.apicurio_version}-all.tar.gz"
            shutil.rmtree(self._apicurio, ignore_errors=True)
            self._apicurio.mkdir(parents=True)
            res = subprocess.run(["tar", "-xzf", str(archive), "-C", str(self._apicurio), "--no-same-owner"],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise StackError(f"unpacking {archive.name} failed: {res.stderr.strip()[:200]}")
            archive.unlink()
            (self._apicurio / ".complete").touch()

    def _run_jar(self) -> Path:
        for cand in (self._apicurio / "quarkus-run.jar", self._apicurio / "quarkus-app" / "quarkus-run.jar"):
            if cand.exists():
                return cand
        raise StackError(f"quarkus-run.jar not found under {self._apicurio}")

    # -- start ---------------------------------------------------------------

    def _spawn(self, argv: list[str], log: Path, pidfile: Path, env: Mapping[str, str] | None = None,
               cwd: Path | None = None) -> int:
        """Start ``argv`` as a daemon (its own session, re-parented to init); returns its pid."""
        pidfile.unlink(missing_ok=True)
        with log.open("ab") as out:
            subprocess.run(["setsid", "-f", "sh", "-c", 'echo $$ > "$0"; exec "$@"', str(pidfile), *argv],
                           stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           env={**os.environ, **(env or {})}, cwd=cwd, check=True)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            text = pidfile.read_text().strip() if pidfile.exists() else ""
            if text.isdigit():
                return int(text)
            time.sleep(0.02)
        raise StackError(f"{argv[0]} did not start (see {log})")

    def _check_free(self, port: int, what: str) -> None:
        if _port_in_use(port):
            raise StackError(f"port {port} ({what}) is already in use by another process")

    def _start_kafka(self) -> None:
        s = self.settings
        root = s.root
        data = root / "kafka-data"
        props = root / "kafka.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"controller.quorum.voters=1@127.0.0.1:{s.controller_port}",
            f"log.dirs={data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "min.insync.replicas=1",
            "group.initial.rebalance.delay.ms=0",
            "",
        ]))
        log4j = root / "kafka-log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=self._kafka_log))
        java = ["java", "-Xms256m", "-Xmx512m", f"-Dlog4j2.configurationFile={log4j}",
                "-cp", f"{self._libs}/*"]
        if not (data / "meta.properties").exists():
            cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            res = subprocess.run([*java, "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(props)],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise StackError(f"formatting Kafka storage failed: {res.stdout.strip()[-300:]}"
                                 f"{res.stderr.strip()[-300:]}")
        self._check_free(s.kafka_port, "Kafka")
        self._check_free(s.controller_port, "Kafka controller")
        self._spawn([*java, "kafka.Kafka", str(props)], root / "kafka.out", self._kafka_pid)

    def _start_registry(self) -> None:
        s = self.settings
        self._check_free(s.registry_port, "schema registry")
        self._check_free(s.registry_management_port, "schema registry management")
        env = {
            "APICURIO_STORAGE_KIND": "kafkasql",
            "APICURIO_KAFKASQL_BOOTSTRAP_SERVERS": s.bootstrap_servers,
            "QUARKUS_HTTP_HOST": "127.0.0.1",
            "QUARKUS_HTTP_PORT": str(s.registry_port),
            "QUARKUS_MANAGEMENT_HOST": "127.0.0.1",
            "QUARKUS_MANAGEMENT_PORT": str(s.registry_management_port),
        }
        jar = self._run_jar()
        self._spawn([_java21(), "-Xms128m", "-Xmx512m", f"-Dhdrlog.stack={s.root}", "-jar", str(jar)],
                    self._registry_log, self._registry_pid, env=env, cwd=jar.parent)

    # -- readiness -----------------------------------------------------------

    def _wait(self, ready: Callable[[], bool], alive: Callable[[], bool], what: str, log: Path,
              deadline: float) -> None:
        while time.monotonic() < deadline:
            if ready():
                return
            if not alive():
                raise StackError(f"{what} exited during start-up (see {log})")
            time.sleep(0.25)
        raise StackError(f"{what} did not become ready in time (see {log})")

    def _kafka_ready(self) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        if not _port_in_use(self.settings.kafka_port):
            return False
        quiet = logging.getLogger("producer.devstack.probe")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        try:
            admin = AdminClient({"bootstrap.servers": self.settings.bootstrap_servers}, logger=quiet)
            admin.list_topics(timeout=1.0)
            return True
        except KafkaException:
            return False

    def _http(self, method: str, path: str, body: dict[str, str] | None = None) -> tuple[int, str]:
        req = urllib.request.Request(
            f"{self.settings.registry_url}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""

    def _registry_ready(self) -> bool:
        return self._http("GET", "/subjects")[0] == 200

    def _set_compatibility(self) -> None:
        level = self.settings.compatibility
        code, text = self._http("PUT", "/config", {"compatibility": level})
        if code != 200:
            raise StackError(f"setting the registry's compatibility to {level} failed: HTTP {code} {text[:200]}")
        code, text = self._http("GET", "/config")
        if code != 200 or json.loads(text).get("compatibilityLevel") != level:
            raise StackError(f"the registry's compatibility is not {level}: {text[:200]}")

    # -- public --------------------------------------------------------------

    def up(self, timeout: float = 300.0) -> StackStatus:
        """Fetch, format once, start what is not running, wait until both answer."""
        deadline = time.monotonic() + timeout
        self.fetch()
        st = self.status()
        if not st.kafka.running:
            self._say(f"starting Kafka on {self.settings.bootstrap_servers}")
            self._start_kafka()
        self._wait(self._kafka_ready, lambda: _running(self._kafka_pid), "Kafka", self._kafka_log, deadline)
        if not st.registry.running:
            self._say(f"starting the schema registry on {self.settings.registry_url}")
            self._start_registry()
        self._wait(self._registry_ready, lambda: _running(self._registry_pid), "the schema registry",
                   self._registry_log, deadline)
        self._set_compatibility()
        return self.status()

    def _stop(self, pid: int | None, pidfile: Path, timeout: float) -> None:
        if pid is None:
            pidfile.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        while time.monotonic() < end and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)

    def down(self, timeout: float = 60.0) -> None:
        """Registry first (it writes to Kafka), then Kafka; SIGKILL after the timeout."""
        st = self.status()
        self._stop(st.registry.pid, self._registry_pid, timeout)
        self._stop(st.kafka.pid, self._kafka_pid, timeout)

    def restart(self) -> StackStatus:
        self.down()
        return self.up()


def run_stack_command(action: str, settings: StackSettings) -> int:
    """``hdrlog stack up|down|status|restart``: prints the status, returns an exit code."""
    stack = LocalStack(settings)
    if action == "up":
        status = stack.up()
    elif action == "down":
        stack.down()
        status = stack.status()
    elif action == "restart":
        status = stack.restart()
    elif action == "status":
        status = stack.status()
    else:
        raise StackError(f"unknown stack action: {action}")
    print(status.render())
    return 0 if action == "down" or status.running else 1
