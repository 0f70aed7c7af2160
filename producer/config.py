"""The one validated configuration of the agent.

Precedence, lowest first: each field's default, the TOML file (``--config``),
environment variables (``HDRLOG_*``, named beside each field), command-line
flags.  Unknown keys are refused with the key's name; every value is checked
once here, at start-up, so later stages can trust it.  ``kafka`` and
``registry`` are passed through to librdkafka and the registry client (TLS,
SASL, ...); secrets among them are masked by ``masked()``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from producer.errors import ConfigError

_SECRET_HINTS = ("password", "secret", "basic.auth.user.info", "key.pem", "token")


def _meta(env: str | None, help_text: str) -> dict[str, Any]:
    return {"env": env, "help": help_text}


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``hdrlog agent`` needs; see README "Configuration"."""

    interfaces: tuple[str, ...] = field(
        default=(), metadata=_meta("HDRLOG_IFACE", "interfaces to capture (env: comma-separated)"))
    bootstrap_servers: str = field(
        default="127.0.0.1:9092", metadata=_meta("HDRLOG_BOOTSTRAP_SERVERS", "Kafka bootstrap servers"))
    schema_registry: str = field(
        default="http://127.0.0.1:8081/apis/ccompat/v7",
        metadata=_meta("HDRLOG_SCHEMA_REGISTRY", "Confluent-compatible schema registry URL"))
    topic: str = field(
        default="hdrlog.headers", metadata=_meta("HDRLOG_TOPIC", "Kafka topic for header records"))
    host_id: str = field(
        default_factory=socket.gethostname,
        metadata=_meta("HDRLOG_HOST_ID", "this host's id: message key and record field"))
    partitions: int = field(
        default=6, metadata=_meta("HDRLOG_PARTITIONS", "partitions when the agent creates the topic"))
    duration_s: float | None = field(
        default=None, metadata=_meta("HDRLOG_DURATION", "stop after this many seconds (none: run until signalled)"))
    stdout: bool = field(
        default=False, metadata=_meta(None, "print records as JSON lines instead of publishing"))
    ringbuf_pages: int = field(
        default=4096, metadata=_meta("HDRLOG_RINGBUF_PAGES", "kernel ring buffer size in pages (power of two)"))
    poll_interval_ms: int = field(
        default=50, metadata=_meta("HDRLOG_POLL_INTERVAL_MS", "longest wait before draining the ring buffer"))
    wakeup_records: int = field(
        default=128, metadata=_meta("HDRLOG_WAKEUP_RECORDS", "records per CPU between kernel wake-ups"))
    sample_rate: int = field(
        default=1, metadata=_meta("HDRLOG_SAMPLE_RATE", "record 1 packet in N (1: every packet)"))
    include_cidrs: tuple[str, ...] = field(
        default=(), metadata=_meta("HDRLOG_INCLUDE_CIDRS", "record only IP packets to/from these CIDRs"))
    exclude_cidrs: tuple[str, ...] = field(
        default=(), metadata=_meta("HDRLOG_EXCLUDE_CIDRS", "never record IP packets to/from these CIDRs"))
    protocols: tuple[str, ...] = field(
        default=(), metadata=_meta("HDRLOG_PROTOCOLS", "record only these IP protocols (names or numbers)"))
    ports: tuple[str, ...] = field(
        default=(), metadata=_meta("HDRLOG_PORTS", "record only packets with these ports (N or N-M)"))
    drop_non_ip: bool = field(
        default=False, metadata=_meta("HDRLOG_DROP_NON_IP", "drop frames that are not IPv4/IPv6"))
    hook: str = field(
        default="tc", metadata=_meta("HDRLOG_HOOK", "tc (ingress and egress) or xdp (ingress only)"))
    xdp_mode: str = field(
        default="auto", metadata=_meta("HDRLOG_XDP_MODE", "auto (native, else generic), native or generic"))
    tc_priority: int = field(
        default=7, metadata=_meta("HDRLOG_TC_PRIORITY", "tc filter priority of the capture programs"))
    queue_chunks: int = field(
        default=64, metadata=_meta("HDRLOG_QUEUE_CHUNKS", "drained chunks buffered between capture and publish"))
    connect_timeout_s: float = field(
        default=30.0, metadata=_meta("HDRLOG_CONNECT_TIMEOUT", "how long start-up retries the broker and registry"))
    flush_timeout_s: float = field(
        default=15.0, metadata=_meta("HDRLOG_FLUSH_TIMEOUT", "deadline for delivering what is queued at exit"))
    stats_interval_s: float = field(
        default=60.0, metadata=_meta("HDRLOG_STATS_INTERVAL", "log every counter this often (0: only at exit)"))
    kafka: Mapping[str, str] = field(
        default_factory=dict, metadata=_meta(None, "extra librdkafka properties (file only)"))
    registry: Mapping[str, str] = field(
        default_factory=dict, metadata=_meta(None, "extra schema registry client properties (file only)"))

    def masked(self) -> dict[str, Any]:
        """The effective config as a dict, secrets replaced by '***'."""
        out: dict[str, Any] = {}
        for f in fields(self):
            val = getattr(self, f.name)
            if isinstance(val, Mapping):
                val = {k: ("***" if _is_secret(k) else v) for k, v in val.items()}
            elif isinstance(val, tuple):
                val = list(val)
            out[f.name] = val
        return out


def _is_secret(key: str) -> bool:
    k = key.lower()
    return any(h in k for h in _SECRET_HINTS)


def _coerce(name: str, typ: str, value: Any, source: str) -> Any:
    where = f"{source}: {name}"
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
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if typ in ("float", "float | None"):
            if value is None or (typ == "float | None" and str(value).lower() in ("", "none")):
                return None
            f = float(value)
            if not math.isfinite(f):
                raise ValueError(value)
            return f
        if typ == "str":
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if typ == "Mapping[str, str]":
            if not isinstance(value, Mapping):
                raise ValueError(value)
            return {str(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value for {where}: {value!r} (expected {typ})") from None
    raise ConfigError(f"unsupported type for {where}")  # pragma: no cover


PROTOCOL_NAMES = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
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


def _validate(cfg: AgentConfig) -> AgentConfig:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"invalid value for {key}: {why}")

    if cfg.ringbuf_pages <= 0 or cfg.ringbuf_pages & (cfg.ringbuf_pages - 1):
        raise bad("ringbuf_pages", f"{cfg.ringbuf_pages} is not a power of two")
    for key in ("partitions", "poll_interval_ms", "wakeup_records", "sample_rate", "queue_chunks"):
        if getattr(cfg, key) < 1:
            raise bad(key, f"{getattr(cfg, key)} must be at least 1")
    if cfg.hook not in ("tc", "xdp"):
        raise bad("hook", f"{cfg.hook!r} is not tc or xdp")
    if cfg.xdp_mode not in ("auto", "native", "generic"):
        raise bad("xdp_mode", f"{cfg.xdp_mode!r} is not auto, native or generic")
    if not 1 <= cfg.tc_priority <= 0xFFFF:
        raise bad("tc_priority", f"{cfg.tc_priority} must be in 1..65535")
    for key in ("connect_timeout_s", "flush_timeout_s", "stats_interval_s"):
        if getattr(cfg, key) < 0:
            raise bad(key, "must not be negative")
    if cfg.duration_s is not None and cfg.duration_s <= 0:
        raise bad("duration_s", "must be positive")
    if not cfg.host_id:
        raise bad("host_id", "must not be empty")
    if not cfg.topic:
        raise bad("topic", "must not be empty")
    for key in ("include_cidrs", "exclude_cidrs"):
        for text in getattr(cfg, key):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise bad(key, f"{text!r} is not a CIDR") from None
    for text in cfg.protocols:
        if protocol_number(text) is None:
            raise bad("protocols", f"{text!r} is not a protocol name or number 0..255")
    for text in cfg.ports:
        if port_range(text) is None:
            raise bad("ports", f"{text!r} is not a port or range N-M within 0..65535")
    for name in cfg.interfaces:
        if not name or len(name) > 15 or "/" in name or name.strip() != name:
            raise bad("interfaces", f"{name!r} is not a valid interface name")
    return cfg


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Build the effective config; raises ConfigError naming the key."""
    known = {f.name: f for f in fields(AgentConfig)}
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        for key, val in data.items():
            if key not in known:
                raise ConfigError(f"unknown key in {path}: {key}")
            values[key] = _coerce(key, str(known[key].type), val, str(path))
    for f in known.values():
        var = f.metadata.get("env")
        if var and env is not None and var in env:
            values[f.name] = _coerce(f.name, str(f.type), env[var], f"environment {var}")
    for key, val in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown setting: {key}")
        if val is not None:
            values[key] = _coerce(key, str(known[key].type), val, "command line")
    return _validate(dataclasses.replace(AgentConfig(), **values))
