"""The hdrlog exception tree.

Every library error (bcc, netlink, librdkafka, registry HTTP, OS) is
translated into one of these where it enters the program, with
``raise ... from exc``.  Each carries ``retriable``: the retry policy reads
that property instead of guessing from messages.

    HdrlogError                   root; ``str()`` is a one-line user message
    ├── ConfigError               bad configuration (names the key)
    ├── PrivilegeError            missing capability (CAP_BPF, CAP_NET_ADMIN, ...)
    ├── CaptureError              BPF compile/load/attach/ring-buffer problems
    │   └── InterfaceError        no such interface
    ├── RegistryError             schema registry unreachable or refused
    ├── BrokerError               Kafka unreachable or refused
    ├── SerializationError        a record could not be encoded/decoded
    │   └── PoisonMessage         a consumed message that can never be decoded (to the dead-letter topic)
    ├── SinkError                 a consumer sink refused or failed a write
    └── StackError                the local dev stack failed to start/stop
"""

from __future__ import annotations

#: what a TLS error says when retrying cannot help (lower case): the certificate, or TLS spoken to plaintext
TLS_REFUSALS = ("certificate", "wrong version number", "wrong_version_number", "unknown protocol",
                "packet length too long")


class HdrlogError(Exception):
    """Root of all hdrlog errors; the message is one line meant for a user."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConfigError(HdrlogError):
    """Invalid configuration; the message names the offending key."""


class PrivilegeError(HdrlogError):
    """The process lacks a capability it needs."""


class CaptureError(HdrlogError):
    """Loading, attaching or reading the BPF program failed."""


class InterfaceError(CaptureError):
    """A named network interface does not exist."""


class RegistryError(HdrlogError):
    """The schema registry is unreachable or refused a request; ``status`` is its HTTP answer and
    ``code`` the registry's own error code (40403: no such schema), if any."""

    status: int | None = None
    code: int | None = None


class BrokerError(HdrlogError):
    """The Kafka cluster is unreachable or refused a request."""


class SerializationError(HdrlogError):
    """A record could not be encoded or decoded."""


class PoisonMessage(SerializationError):
    """A consumed message that no retry will decode; ``reason`` names why (consumer/telemetry.py)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, retriable=False)
        self.reason = reason


class SinkError(HdrlogError):
    """A consumer sink could not take a write: retriable (the sink is down, busy) or not."""


class StackError(HdrlogError):
    """The local development stack (Kafka + registry) failed."""
