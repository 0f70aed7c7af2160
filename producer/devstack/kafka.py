"""The single Kafka node: its configuration, one-time storage format, and readiness probe.

One process is both broker and KRaft controller; every internal topic has
replication factor 1 (there is one node), and nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import logging
import socket
import subprocess
import uuid
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # (exported, but not in __all__)
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from producer.devstack.secure import PLAIN_USER, SCRAM_USER, SecureFiles
from producer.errors import StackError

MAIN_CLASS = "kafka.Kafka"

# Root at INFO keeps start-up and errors readable; the per-partition chatter of a
# test suite creating hundreds of topics goes to WARN, and the file rolls at 10 MB.
_LOG4J2 = """status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
{quiet}
"""
_QUIET = ("state.change.logger", "org.apache.kafka.controller", "kafka.cluster.Partition",
          "org.apache.kafka.storage.internals.log", "kafka.log.LogManager",
          "org.apache.kafka.coordinator.common.runtime")


def server_properties(*, kafka_port: int, controller_port: int, data_dir: Path,
                      secure: tuple[int, int, SecureFiles] | None = None) -> str:
    """``secure``: (SASL_SSL port, mTLS port, material) of the secure listeners beside the plaintext one
    (``up --secure``)."""
    listeners = f"PLAINTEXT://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}"
    advertised = f"PLAINTEXT://127.0.0.1:{kafka_port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if secure is not None:
        tls = f",SASL_SSL://127.0.0.1:{secure[0]},MTLS://127.0.0.1:{secure[1]}"
        listeners += tls
        advertised += tls
        protocols += ",SASL_SSL:SASL_SSL,MTLS:SSL"
    lines = [
        "# Written by hdrlog on every start; edits are overwritten.",
        "process.roles=broker,controller",
        "node.id=1",
        f"listeners={listeners}",
        f"advertised.listeners={advertised}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"listener.security.protocol.map={protocols}",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"log.dirs={data_dir}",
        "num.partitions=1",
        "default.replication.factor=1",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "min.insync.replicas=1",
        # Consumers in tests join alone; the 3 s default would only delay them.
        "group.initial.rebalance.delay.ms=0",
    ]
    if secure is not None:
        lines += _secure_listeners(secure[2])
    return "\n".join(lines) + "\n"


def _secure_listeners(files: SecureFiles) -> list[str]:
    """SASL_SSL: SCRAM-SHA-512 (users kept by the cluster: ``add_scram_users``) and PLAIN (users here) over
    TLS with a PEM key store; a client certificate is requested and checked against the CA, not required.
    MTLS (security protocol SSL): the client certificate *is* the authentication, required and checked
    against the CA; the principal is the certificate's subject (``User:CN=hdrlog-agent,O=hdrlog local stack``).

    OAUTHBEARER is there too with Kafka's *unsecured* JWT validator (any unsigned token is believed:
    a development stand-in for an OIDC provider, so that librdkafka's OAUTHBEARER settings are tested
    end to end).  ACLs are enforced (StandardAuthorizer): a resource without ACLs is open to all, the
    plaintext and controller listeners' ANONYMOUS is a super user, and tests deny what they need denied.
    """
    plain = " ".join(f'user_{u}="{p}"' for u, p in files.passwords().items() if u == PLAIN_USER)
    p = "listener.name.sasl_ssl."
    return [
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=true",
        "super.users=User:ANONYMOUS",
        f"{p}sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN,OAUTHBEARER",
        f"{p}scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;",
        f"{p}plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required {plain};",
        f"{p}oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule "
        "required;",
        f"{p}ssl.keystore.type=PEM",
        f"{p}ssl.keystore.location={files.broker}",
        f"{p}ssl.truststore.type=PEM",
        f"{p}ssl.truststore.location={files.ca}",
        f"{p}ssl.client.auth=requested",
        "listener.name.mtls.ssl.keystore.type=PEM",
        f"listener.name.mtls.ssl.keystore.location={files.broker}",
        "listener.name.mtls.ssl.truststore.type=PEM",
        f"listener.name.mtls.ssl.truststore.location={files.ca}",
        "listener.name.mtls.ssl.client.auth=required",
    ]


def add_scram_users(bootstrap_servers: str, files: SecureFiles, timeout_s: float = 30.0) -> None:
    """Give the SCRAM user its password (over the plaintext listener; idempotent)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    password = files.passwords()[SCRAM_USER]
    upsert = UserScramCredentialUpsertion(SCRAM_USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                          password.encode())
    try:
        for fut in admin.alter_user_scram_credentials([upsert]).values():
            fut.result(timeout=timeout_s)
    except KafkaException as exc:
        raise StackError(f"cannot create the SCRAM user {SCRAM_USER}: {exc}") from exc


def log4j2_config(log: Path, quiet: tuple[str, ...] = _QUIET) -> str:
    """A rolling-file log4j2 configuration; the ``quiet`` loggers only log warnings (Connect uses it too)."""
    lines = "\n".join(f"logger.q{i}.name = {name}\nlogger.q{i}.level = WARN" for i, name in enumerate(quiet))
    return _LOG4J2.format(log=log, quiet=lines)


def jvm_args(java: Path, libs: Path, log4j2: Path) -> list[str]:
    # 512 MB is plenty for a development node and leaves room on a small machine.
    return [str(java), "-Xms128m", "-Xmx512m", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j2}", "-cp", f"{libs}/*"]


def is_formatted(data_dir: Path) -> bool:
    return (data_dir / "meta.properties").exists()


def format_storage(jvm: list[str], properties: Path, data_dir: Path) -> None:
    """Give ``data_dir`` a new cluster id; only when it has none, since re-formatting would orphan the data."""
    if is_formatted(data_dir):
        return
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")  # Kafka's Uuid text form
    try:
        res = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)],
                             capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"formatting Kafka storage failed: {exc}") from exc
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        why = lines[-1][:200] if lines else f"exit status {res.returncode}"
        raise StackError(f"formatting Kafka storage in {data_dir} failed: {why}")


class KafkaProbe:
    """Answers "does the broker serve metadata yet?"; one admin client for the whole wait.

    The client is only created once the port accepts connections: before that,
    librdkafka would log every refused connection.
    """

    def __init__(self, bootstrap_servers: str, port: int) -> None:
        self._bootstrap = bootstrap_servers
        self._port = port
        self._admin: AdminClient | None = None
        # A private, unregistered logger: librdkafka's connection errors during start-up are
        # expected and must not reach the user's handlers (nor the root logger's last resort).
        self._quiet = logging.Logger("hdrlog.devstack.kafka-probe")
        self._quiet.addHandler(logging.NullHandler())

    def __call__(self) -> bool:
        if self._admin is None:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", self._port)) != 0:
                    return False
            self._admin = AdminClient({"bootstrap.servers": self._bootstrap}, logger=self._quiet)
        try:
            metadata = self._admin.list_topics(timeout=2.0)
        except KafkaException:
            return False
        return bool(metadata.brokers)
