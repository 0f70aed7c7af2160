"""The one validated configuration tree of the agent (and the consumer's Kafka/registry part).

One frozen dataclass per stage (``[capture]``, ``[batch]``, ``[buffer]``,
``[kafka]``, ``[registry]``, ``[telemetry]``, ``[ingest]``) under ``AgentConfig``.  Each
field carries, in its metadata, its meaning, its environment variable, its
command-line flag and whether SIGHUP applies it to a running agent; the CLI
flags, the README's table (tests/test_docs.py) and the reload logic all read
that metadata, so none of them is a hand-kept copy.

Precedence, lowest first: each field's default, the TOML file (``--config``),
environment variables, command-line flags.  Unknown keys are refused with
their dotted name; every value is checked once, here, so stages trust what
they are given.  ``kafka.properties`` and ``registry.properties`` pass
through to librdkafka and the registry client (TLS, SASL, ...); the secrets
among them are masked by ``masked()`` and never logged.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import socket
import stat
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from producer.errors import ConfigError

_SECRET_HINTS = ("password", "secret", "basic.auth.user.info", "key.pem", "token", "credentials")


def _m(help_text: str, *, env: str | None = None, flag: str | None = None, reload: bool = False,
       metavar: str | None = None, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Field metadata: meaning, env var, CLI flag, applied by SIGHUP, CLI metavar/choices."""
    return {"help": help_text, "env": env, "flag": flag, "reload": reload, "metavar": metavar,
            "choices": choices}


log = logging.getLogger(__name__)


def _loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this host's loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bad(key: str, why: str) -> ConfigError:
    return ConfigError(f"invalid value for {key}: {why}")


def listen_address(key: str, listen: str, token_file: str, risk: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT a local HTTP server listens on: an address other hosts reach needs a
    bearer token (``telemetry.token_file``), or ConfigError naming ``key`` and the ``risk``."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise _bad(key, f"{listen!r} is not HOST:PORT or off")
    if not token_file and not _loopback(host.strip("[]")):
        raise _bad(key, f"{host} is reachable from other hosts: set telemetry.token_file too ({risk})")
    return host.strip("[]"), int(port)


def _at_least(section: str, obj: Any, one: tuple[str, ...] = (), zero: tuple[str, ...] = ()) -> None:
    for key in one:
        if getattr(obj, key) < 1:
            raise _bad(f"{section}.{key}", f"{getattr(obj, key)} must be at least 1")
    for key in zero:
        if getattr(obj, key) < 0:
            raise _bad(f"{section}.{key}", "must not be negative")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise _bad(key, f"{value!r} is not one of {', '.join(options)}")


PROTOCOL_NAMES: Mapping[str, int] = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
                                     "icmpv6": 58, "sctp": 132, "udplite": 136}


def protocol_number(text: str) -> int | None:
    t = text.strip().lower()
    if t in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[t]
    return int(t) if t.isdigit() and int(t) <= 255 else None


def port_range(text: str) -> tuple[int, int] | None:
    lo, _, hi = text.strip().partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()):
        return None
    a, b = int(lo), int(hi or lo)
    return (a, b) if 0 <= a <= b <= 0xFFFF else None


HOOKS = ("tc", "xdp")
XDP_MODES = ("auto", "native", "generic")
SHAPES = ("batch", "record")
BUFFER_TYPES = ("memory", "disk")
WHEN_FULL = ("block", "drop_newest", "drop_oldest")
#: more parse workers than cores only add context switches; this bounds a typo
MAX_PARSE_WORKERS = 64


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """``[capture]``: hooks, the ring buffer, and the in-kernel filters and sampling."""

    interfaces: tuple[str, ...] = field(default=(), metadata=_m(
        "interfaces to capture, or glob patterns that also catch links appearing later",
        env="HDRLOG_IFACE", flag="--iface", metavar="IFACE"))
    hook: str = field(default="tc", metadata=_m(
        "`tc`: clsact ingress and egress; `xdp`: ingress only, before the stack (high rate)",
        env="HDRLOG_HOOK", flag="--hook", choices=HOOKS))
    xdp_mode: str = field(default="auto", metadata=_m(
        "`native`, `generic`, or `auto` (native, else generic)", env="HDRLOG_XDP_MODE", flag="--xdp-mode",
        choices=XDP_MODES))
    tc_priority: int = field(default=7, metadata=_m(
        "tc filter priority of the capture programs", env="HDRLOG_TC_PRIORITY"))
    ringbuf_pages: int = field(default=4096, metadata=_m(
        "kernel ring buffer pages (power of two; 16 MiB)", env="HDRLOG_RINGBUF_PAGES", flag="--ringbuf-pages",
        metavar="N"))
    poll_interval_ms: int = field(default=50, metadata=_m(
        "longest wait before draining the ring buffer", env="HDRLOG_POLL_INTERVAL_MS"))
    wakeup_records: int = field(default=4096, metadata=_m(
        "records per CPU between kernel wake-ups", env="HDRLOG_WAKEUP_RECORDS", reload=True))
    queue_chunks: int = field(default=16, metadata=_m(
        "drained chunks (up to 8192 records each) queued between capture and batching",
        env="HDRLOG_QUEUE_CHUNKS"))
    sample_rate: int = field(default=1, metadata=_m(
        "record 1 packet in N (`sample_rate` is in every record)", env="HDRLOG_SAMPLE_RATE",
        flag="--sample-rate", reload=True, metavar="N"))
    include_cidrs: tuple[str, ...] = field(default=(), metadata=_m(
        "record only IP packets to/from these CIDRs", env="HDRLOG_INCLUDE_CIDRS", flag="--include-cidr",
        reload=True, metavar="CIDR"))
    exclude_cidrs: tuple[str, ...] = field(default=(), metadata=_m(
        "never record IP packets to/from these CIDRs", env="HDRLOG_EXCLUDE_CIDRS", flag="--exclude-cidr",
        reload=True, metavar="CIDR"))
    protocols: tuple[str, ...] = field(default=(), metadata=_m(
        "record only these IP protocols: `tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, ... or numbers",
        env="HDRLOG_PROTOCOLS", flag="--protocol", reload=True, metavar="PROTO"))
    ports: tuple[str, ...] = field(default=(), metadata=_m(
        "record only packets whose source or destination port is listed (`N` or `N-M`)",
        env="HDRLOG_PORTS", flag="--port", reload=True, metavar="N[-M]"))
    drop_non_ip: bool = field(default=False, metadata=_m(
        "do not record frames that are not IPv4/IPv6", env="HDRLOG_DROP_NON_IP", flag="--drop-non-ip",
        reload=True))
    pin_dir: str = field(default="/sys/fs/bpf/hdrlog", metadata=_m(
        "bpffs directory where the ring buffer is pinned, so a restarted agent drains what a killed one "
        "left (empty: no pinning)", env="HDRLOG_PIN_DIR"))

    def __post_init__(self) -> None:
        s = "capture"
        if self.ringbuf_pages <= 0 or self.ringbuf_pages & (self.ringbuf_pages - 1):
            raise _bad(f"{s}.ringbuf_pages", f"{self.ringbuf_pages} is not a power of two")
        _at_least(s, self, one=("poll_interval_ms", "wakeup_records", "sample_rate", "queue_chunks"))
        if self.sample_rate > 2**31 - 1:
            raise _bad(f"{s}.sample_rate", f"{self.sample_rate} is above 2147483647 (an Avro int)")
        _choice(f"{s}.hook", self.hook, HOOKS)
        _choice(f"{s}.xdp_mode", self.xdp_mode, XDP_MODES)
        if not 1 <= self.tc_priority <= 0xFFFF:
            raise _bad(f"{s}.tc_priority", f"{self.tc_priority} must be in 1..65535")
        for key in ("include_cidrs", "exclude_cidrs"):
            for text in getattr(self, key):
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError:
                    raise _bad(f"{s}.{key}", f"{text!r} is not a CIDR") from None
        for text in self.protocols:
            if protocol_number(text) is None:
                raise _bad(f"{s}.protocols", f"{text!r} is not a protocol name or number 0..255")
        for text in self.ports:
            if port_range(text) is None:
                raise _bad(f"{s}.ports", f"{text!r} is not a port or range N-M within 0..65535")
        for name in self.interfaces:
            if not name or len(name) > 15 or "/" in name or name.strip() != name:
                raise _bad(f"{s}.interfaces", f"{name!r} is not a valid interface name")


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """``[batch]``: how records are grouped before encoding (one message per batch in `batch` shape)."""

    max_records: int = field(default=4096, metadata=_m(
        "records at most in a batch", env="HDRLOG_BATCH_MAX_RECORDS"))
    max_bytes: int = field(default=1_000_000, metadata=_m(
        "encoded bytes at most in one batch message (a larger encoding is split; keep it under the "
        "topic's `max.message.bytes`)", env="HDRLOG_BATCH_MAX_BYTES"))
    linger_ms: int = field(default=100, metadata=_m(
        "longest time a record waits for its batch to fill", env="HDRLOG_BATCH_LINGER_MS"))

    def __post_init__(self) -> None:
        _at_least("batch", self, one=("max_records",), zero=("linger_ms",))
        if self.max_bytes < 4096:
            raise _bad("batch.max_bytes", f"{self.max_bytes} must be at least 4096")


@dataclass(frozen=True, slots=True)
class BufferConfig:
    """``[buffer]``: between the encoder and the publisher; what happens when it is full."""

    type: str = field(default="memory", metadata=_m(
        "`memory`, or `disk` (SQLite in `state_dir`: survives broker outages and restarts)",
        env="HDRLOG_BUFFER_TYPE", flag="--buffer", choices=BUFFER_TYPES))
    when_full: str = field(default="block", metadata=_m(
        "`block` (backpressure to the ring buffer), `drop_newest` or `drop_oldest` (counted)",
        env="HDRLOG_BUFFER_WHEN_FULL", flag="--when-full", choices=WHEN_FULL))
    max_bytes: int = field(default=0, metadata=_m(
        "size cap of the encoded messages held (0: 64 MiB in memory, 1 GiB on disk)",
        env="HDRLOG_BUFFER_MAX_BYTES"))

    def __post_init__(self) -> None:
        _choice("buffer.type", self.type, BUFFER_TYPES)
        _choice("buffer.when_full", self.when_full, WHEN_FULL)
        _at_least("buffer", self, zero=("max_bytes",))

    @property
    def cap_bytes(self) -> int:
        if self.max_bytes:
            return self.max_bytes
        return (1 << 30) if self.type == "disk" else (64 << 20)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """``[kafka]``: the broker, the topic, the message shape; ``[kafka.properties]`` goes to librdkafka."""

    bootstrap_servers: str = field(default="127.0.0.1:9092", metadata=_m(
        "Kafka bootstrap servers", env="HDRLOG_BOOTSTRAP_SERVERS", flag="--bootstrap-servers", metavar="HOSTS"))
    topic: str = field(default="hdrlog.headers", metadata=_m(
        "topic of the header records; the value schema's subject is `<topic>-value`", env="HDRLOG_TOPIC",
        flag="--topic"))
    shape: str = field(default="batch", metadata=_m(
        "`batch`: one HeaderBatch per message; `record`: one HeaderRecord per message", env="HDRLOG_SHAPE",
        flag="--shape", choices=SHAPES))
    partitions: int = field(default=6, metadata=_m(
        "partitions when the agent creates a topic", env="HDRLOG_PARTITIONS", flag="--partitions", metavar="N"))
    connect_timeout_s: float = field(default=30.0, metadata=_m(
        "how long start-up retries the registry and broker", env="HDRLOG_CONNECT_TIMEOUT",
        flag="--connect-timeout", metavar="S"))
    flush_timeout_s: float = field(default=15.0, metadata=_m(
        "deadline for delivering what is buffered at exit (a disk buffer keeps the rest for the next start)",
        env="HDRLOG_FLUSH_TIMEOUT", metavar="S"))
    retry_backoff_s: float = field(default=1.0, metadata=_m(
        "pause before re-sending after a retriable delivery failure (doubles up to 30 s)",
        env="HDRLOG_RETRY_BACKOFF"))
    properties: Mapping[str, str] = field(default_factory=dict, metadata=_m(
        "`[kafka.properties]`: librdkafka properties passed through (TLS, SASL, `message.timeout.ms`, ...)"))
    sasl_password_file: str = field(default="", metadata=_m(
        "a file holding the SASL password (`sasl.password`; keeps it out of the config file)",
        env="HDRLOG_KAFKA_SASL_PASSWORD_FILE", metavar="FILE"))

    def __post_init__(self) -> None:
        if self.sasl_password_file and "sasl.password" in self.properties:
            raise _bad("kafka.sasl_password_file", "set it or kafka.properties sasl.password, not both")
        if not self.topic:
            raise _bad("kafka.topic", "must not be empty")
        if not self.bootstrap_servers:
            raise _bad("kafka.bootstrap_servers", "must not be empty")
        _choice("kafka.shape", self.shape, SHAPES)
        _at_least("kafka", self, one=("partitions",), zero=("connect_timeout_s", "flush_timeout_s"))
        if self.retry_backoff_s <= 0:
            raise _bad("kafka.retry_backoff_s", "must be positive")

    def client_properties(self) -> dict[str, str]:
        """``properties`` with the SASL password of ``sasl_password_file`` (ConfigError if unreadable)."""
        props = dict(self.properties)
        if self.sasl_password_file:
            props["sasl.password"] = _secret_file("kafka.sasl_password_file", self.sasl_password_file,
                                                  "SASL password file")
        return props


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """``[registry]``: the Confluent-compatible schema registry; ``[registry.properties]`` goes to its client."""

    url: str = field(default="http://127.0.0.1:8081/apis/ccompat/v7", metadata=_m(
        "Confluent-compatible registry URL", env="HDRLOG_SCHEMA_REGISTRY", flag="--schema-registry", metavar="URL"))
    auto_register: bool = field(default=True, metadata=_m(
        "register the schemas at start; `false`: only look them up, and refuse to start without them",
        env="HDRLOG_AUTO_REGISTER"))
    properties: Mapping[str, str] = field(default_factory=dict, metadata=_m(
        "`[registry.properties]`: registry client properties (TLS: `ssl.ca.location`, `ssl.certificate.location`, "
        "`ssl.key.location`)"))
    username: str = field(default="", metadata=_m(
        "basic-auth user at the registry (with `password_file`)", env="HDRLOG_REGISTRY_USERNAME", metavar="USER"))
    password_file: str = field(default="", metadata=_m(
        "a file holding the registry user's password (keeps it out of the config file)",
        env="HDRLOG_REGISTRY_PASSWORD_FILE", metavar="FILE"))

    def __post_init__(self) -> None:
        if "@" in self.url:  # (the URL is shown in logs and errors: it is no place for a secret)
            raise _bad("registry.url", "holds credentials: give them as registry.username and registry.password_file")
        if not self.url.startswith(("http://", "https://")):
            raise _bad("registry.url", f"{self.url!r} is not an http(s) URL")
        if bool(self.username) != bool(self.password_file):
            raise _bad("registry.username" if not self.username else "registry.password_file",
                       "registry.username and registry.password_file go together")
        if self.username and "basic.auth.user.info" in self.properties:
            raise _bad("registry.username", "set it or registry.properties basic.auth.user.info, not both")
        if ":" in self.username:
            raise _bad("registry.username", "must not contain ':'")

    def client_properties(self) -> dict[str, str]:
        """``properties`` with the basic-auth credentials of ``username``/``password_file`` (ConfigError if
        the file is unreadable)."""
        props = dict(self.properties)
        if self.username:
            password = _secret_file("registry.password_file", self.password_file, "registry password file")
            props["basic.auth.user.info"] = f"{self.username}:{password}"
        return props


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """``[telemetry]``: the local HTTP server (/metrics, /api/v1/status), the stats log and topic."""

    listen: str = field(default="127.0.0.1:9464", metadata=_m(
        "address of /metrics and /api/v1/status (`off`: no server; port 0: any free port; "
        "an address other hosts reach needs `token_file`)",
        env="HDRLOG_LISTEN", flag="--listen", metavar="HOST:PORT"))
    stats_interval_s: float = field(default=60.0, metadata=_m(
        "log every counter and publish an AgentStats record this often (0: only the exit summary)",
        env="HDRLOG_STATS_INTERVAL", metavar="S"))
    stats_topic: str = field(default="hdrlog.agent-stats", metadata=_m(
        "topic of the AgentStats records (empty: none)", env="HDRLOG_STATS_TOPIC"))
    token_file: str = field(default="", metadata=_m(
        "a file holding a bearer token every request to the server must carry (empty: none)",
        env="HDRLOG_TOKEN_FILE", metavar="FILE"))
    tls_cert_file: str = field(default="", metadata=_m(
        "serve HTTPS with this certificate chain (PEM; with `tls_key_file`)", env="HDRLOG_TLS_CERT_FILE",
        metavar="FILE"))
    tls_key_file: str = field(default="", metadata=_m(
        "the private key of `tls_cert_file` (PEM, unencrypted: RSA, ECDSA P-256/P-384 or Ed25519)",
        env="HDRLOG_TLS_KEY_FILE", metavar="FILE"))

    def __post_init__(self) -> None:
        _at_least("telemetry", self, zero=("stats_interval_s",))
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise _bad("telemetry.tls_cert_file", "tls_cert_file and tls_key_file go together")
        if self.listen != "off":
            listen_address("telemetry.listen", self.listen, self.token_file,
                           "anyone who reaches the server could read the status and post log events")

    @property
    def address(self) -> tuple[str, int] | None:
        if self.listen == "off":
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def token(self) -> str | None:
        """The bearer token of ``token_file`` (ConfigError if it cannot be read or is empty)."""
        if not self.token_file:
            return None
        token = _secret_file("telemetry.token_file", self.token_file, "token file")
        if not token.isprintable() or " " in token:
            raise _bad("telemetry.token_file", f"{self.token_file} holds no usable token (one printable word)")
        return token


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """``[ingest]``: ``POST /api/v1/logging`` on the telemetry server: log events into the same buffer."""

    topic: str = field(default="hdrlog.logs", metadata=_m(
        "topic of the LogEvent messages (empty: no ingest endpoint)", env="HDRLOG_INGEST_TOPIC",
        flag="--ingest-topic"))
    max_body_bytes: int = field(default=4 << 20, metadata=_m(
        "largest request body taken (413 above it)", env="HDRLOG_INGEST_MAX_BODY_BYTES"))
    body_timeout_s: float = field(default=30.0, metadata=_m(
        "seconds a request's body may take to arrive whole (408 after)", env="HDRLOG_INGEST_BODY_TIMEOUT"))
    parse_workers: int = field(default=1, metadata=_m(
        "processes that parse and encode the bodies, without privileges (0: the agent's own process)",
        env="HDRLOG_INGEST_PARSE_WORKERS"))
    max_queue_events: int = field(default=100_000, metadata=_m(
        "events waiting to be made durable at most (429 above it)", env="HDRLOG_INGEST_MAX_QUEUE_EVENTS"))
    max_queue_bytes: int = field(default=64 << 20, metadata=_m(
        "body bytes of the waiting requests at most (429 above it)", env="HDRLOG_INGEST_MAX_QUEUE_BYTES"))
    linger_ms: float = field(default=5.0, metadata=_m(
        "how long the first request of a group waits for others to share its commit",
        env="HDRLOG_INGEST_LINGER_MS"))
    max_group_events: int = field(default=10_000, metadata=_m(
        "events at most in one group (one buffer entry, one commit)", env="HDRLOG_INGEST_MAX_GROUP_EVENTS"))
    ack_timeout_s: float = field(default=10.0, metadata=_m(
        "memory buffer: longest wait for Kafka's acknowledgement before a 503", env="HDRLOG_INGEST_ACK_TIMEOUT"))
    idempotency_ttl_s: float = field(default=86400.0, metadata=_m(
        "how long an accepted Idempotency-Key is remembered", env="HDRLOG_INGEST_IDEMPOTENCY_TTL"))
    idempotency_max_keys: int = field(default=1_000_000, metadata=_m(
        "Idempotency-Keys remembered at most (the oldest are forgotten first)",
        env="HDRLOG_INGEST_IDEMPOTENCY_MAX_KEYS"))

    def __post_init__(self) -> None:
        _at_least("ingest", self, one=("max_body_bytes", "max_queue_events", "max_queue_bytes", "max_group_events",
                                       "idempotency_max_keys"),
                  zero=("linger_ms", "idempotency_ttl_s"))
        if self.ack_timeout_s <= 0:
            raise _bad("ingest.ack_timeout_s", "must be positive")
        if self.body_timeout_s <= 0:
            raise _bad("ingest.body_timeout_s", "must be positive")
        if not 0 <= self.parse_workers <= MAX_PARSE_WORKERS:
            raise _bad("ingest.parse_workers", f"must be 0..{MAX_PARSE_WORKERS}")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``hdrlog agent`` needs; see the README's "Configuration"."""

    host_id: str = field(default_factory=socket.gethostname, metadata=_m(
        "this host's id: message key and `host_id` of every record (default: the hostname)",
        env="HDRLOG_HOST_ID", flag="--host-id"))
    state_dir: str = field(default="/var/lib/hdrlog", metadata=_m(
        "the disk buffer, the dead-letter file and the capture locks; one per agent",
        env="HDRLOG_STATE_DIR", flag="--state-dir", metavar="DIR"))
    duration_s: float | None = field(default=None, metadata=_m(
        "stop after this many seconds (none: run until signalled)", env="HDRLOG_DURATION", flag="--duration",
        metavar="S"))
    stdout: bool = field(default=False, metadata=_m(
        "print JSON lines instead of publishing (no Kafka at all)", flag="--stdout"))
    output: str = field(default="", metadata=_m(
        "append JSON lines to this file instead of publishing (no Kafka at all)", env="HDRLOG_OUTPUT",
        flag="--output", metavar="FILE"))
    user: str = field(default="", metadata=_m(
        "started as root, become this user once attached (a name, a uid or `uid:gid`): its threads keep no "
        "capability but CAP_NET_ADMIN on the main one; `state_dir` and `capture.pin_dir` are handed to it "
        "(empty: the system user `hdrlog`, or 65534 where there is none; `root`: stay root, with a warning)",
        env="HDRLOG_USER", flag="--user", metavar="USER"))
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)

    def __post_init__(self) -> None:
        if not self.host_id:
            raise _bad("host_id", "must not be empty")
        if not self.state_dir:
            raise _bad("state_dir", "must not be empty")
        if self.duration_s is not None and self.duration_s <= 0:
            raise _bad("duration_s", "must be positive")
        if self.stdout and self.output:
            raise _bad("output", "--stdout and --output exclude each other")
        if self.ingest.topic and self.ingest.topic in (self.kafka.topic, self.telemetry.stats_topic):
            raise _bad("ingest.topic", f"{self.ingest.topic!r} is already the header or stats topic")

    @property
    def json_lines(self) -> bool:
        """Records go out as JSON lines (stdout or a file), not to Kafka."""
        return self.stdout or bool(self.output)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def masked(self) -> dict[str, Any]:
        """The effective config as a dict, secrets replaced by '***'."""
        return _as_dict(self)


#: the sections of the tree, as TOML tables, in the order the README lists them
SECTIONS: Mapping[str, type[Any]] = {
    "capture": CaptureConfig, "batch": BatchConfig, "buffer": BufferConfig, "kafka": KafkaConfig,
    "registry": RegistryConfig, "telemetry": TelemetryConfig, "ingest": IngestConfig}


def is_secret(key: str) -> bool:
    k = key.lower()
    return any(h in k for h in _SECRET_HINTS)


def _as_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        val = getattr(obj, f.name)
        if dataclasses.is_dataclass(val):
            val = _as_dict(val)
        elif isinstance(val, Mapping):
            val = {k: ("***" if is_secret(k) else v) for k, v in val.items()}
        elif isinstance(val, tuple):
            val = list(val)
        out[f.name] = val
    return out


@dataclass(frozen=True, slots=True)
class Setting:
    """One leaf of the tree: its dotted key and its dataclass field."""

    key: str
    field: dataclasses.Field[Any]

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def section(self) -> str | None:
        return self.key.split(".")[0] if "." in self.key else None

    @property
    def env(self) -> str | None:
        return self.field.metadata.get("env")

    @property
    def flag(self) -> str | None:
        return self.field.metadata.get("flag")

    @property
    def reload(self) -> bool:
        return bool(self.field.metadata.get("reload"))

    @property
    def help(self) -> str:
        return str(self.field.metadata.get("help", ""))

    @property
    def type(self) -> str:
        return str(self.field.type)

    def default(self) -> Any:
        owner = SECTIONS[self.section]() if self.section else AgentConfig()
        return getattr(owner, self.name)


def settings() -> Iterator[Setting]:
    """Every leaf setting, top-level keys first, then each section's, in declaration order."""
    for f in fields(AgentConfig):
        if f.name not in SECTIONS:
            yield Setting(f.name, f)
    for name, cls in SECTIONS.items():
        for f in fields(cls):
            yield Setting(f"{name}.{f.name}", f)


def _coerce(key: str, typ: str, value: Any, source: str) -> Any:
    where = f"{source}: {key}"
    try:
        if typ == "tuple[str, ...]":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if typ == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ == "int":
            if isinstance(value, (bool, float)):
                raise ValueError(value)
            return int(value)
        if typ in ("float", "float | None"):
            if value is None or (typ == "float | None" and str(value).lower() in ("", "none")):
                return None
            if isinstance(value, bool):
                raise ValueError(value)
            f = float(value)
            if not math.isfinite(f):
                raise ValueError(value)
            return f
        if typ == "str":
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if typ == "Mapping[str, str]":
            if not isinstance(value, Mapping) or any(isinstance(v, Mapping | list) for v in value.values()):
                raise ValueError(value)
            return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}
    except (TypeError, ValueError):
        shown = "***" if key.endswith("properties") else repr(value)
        raise ConfigError(f"invalid value for {where}: {shown} (expected {typ})") from None
    raise ConfigError(f"unsupported type for {where}")  # pragma: no cover


def _secret_file(key: str, path: str, what: str) -> str:
    """The secret ``path`` holds, stripped (warned of if others may read it; ConfigError naming ``key``
    if it cannot be read or is empty)."""
    others_may(path, what)
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(key, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not secret:
        raise _bad(key, f"{path} is empty")
    return secret


def others_may(path: Path | str, what: str, *, holds_secrets: bool = True) -> None:
    """Warn when users other than the owner's group may change ``path`` (always) or read it (when it
    holds secrets): the agent runs privileged, and its files hold credentials."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # (reading it reports what is wrong)
    if mode & stat.S_IWOTH:
        log.warning("the %s %s can be changed by any user (mode %04o): chmod o-w it", what, path, mode & 0o7777)
    elif holds_secrets and mode & stat.S_IROTH:
        log.warning("the %s %s holds secrets and any user can read it (mode %04o): chmod o-r it", what, path,
                    mode & 0o7777)


def _from_file(path: Path, known: Mapping[str, Setting]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for key, val in data.items():
        if key in SECTIONS:
            if not isinstance(val, Mapping):
                raise ConfigError(f"config file {path}: [{key}] must be a table")
            items = [(f"{key}.{k}", v) for k, v in val.items()]
        else:
            items = [(key, val)]
        for dotted, v in items:
            if dotted not in known:
                near = [k for k in known if k.endswith(f".{dotted}")]
                hint = f" (did you mean {near[0]}, in [{near[0].split('.')[0]}]?)" if near else ""
                raise ConfigError(f"unknown key in {path}: {dotted}{hint}")
            values[dotted] = _coerce(dotted, known[dotted].type, v, str(path))
    return values


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Build the effective config; raises ConfigError naming the key.

    ``overrides`` are keyed by dotted name (``capture.sample_rate``); a None value is unset.
    """
    known = {s.key: s for s in settings()}
    values: dict[str, Any] = {}
    if path is not None:
        from_file = _from_file(path, known)
        values.update(from_file)
        secrets = any(isinstance(v, Mapping) and any(is_secret(k) for k in v) for v in from_file.values())
        others_may(path, "config file", holds_secrets=secrets)
    for s in known.values():
        if s.env and env is not None and s.env in env:
            values[s.key] = _coerce(s.key, s.type, env[s.env], f"environment {s.env}")
    for key, val in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown setting: {key}")
        if val is not None:
            values[key] = _coerce(key, known[key].type, val, "command line")
    top = {k: v for k, v in values.items() if "." not in k}
    for name, cls in SECTIONS.items():
        section = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f"{name}.")}
        top[name] = cls(**section)
    return AgentConfig(**top)


def reloadable(new: AgentConfig, running: AgentConfig) -> tuple[AgentConfig, list[str]]:
    """``running`` with the SIGHUP-applicable settings of ``new``; and the changed keys that need a restart."""
    capture = dataclasses.replace(running.capture, **{
        s.name: getattr(new.capture, s.name) for s in settings() if s.section == "capture" and s.reload})
    ignored = [s.key for s in settings() if not s.reload and _get(new, s.key) != _get(running, s.key)]
    return dataclasses.replace(running, capture=capture), ignored


def _get(cfg: AgentConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def live_settings(cfg: AgentConfig) -> dict[str, Any]:
    """The settings SIGHUP applies, by key, as the agent logs them."""
    return {s.key: _jsonable(_get(cfg, s.key)) for s in settings() if s.reload}


def _jsonable(val: Any) -> Any:
    return list(val) if isinstance(val, tuple) else val
