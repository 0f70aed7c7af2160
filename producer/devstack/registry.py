"""Apicurio Registry: how it is started, when it is ready, and its global compatibility rule.

Storage is ``kafkasql``: the registry keeps its state in a Kafka topic
(``kafkasql-journal``) and replays it at start, so schemas and their ids survive
a restart as long as the Kafka data does.  Clients use the Confluent-compatible
API (``/apis/ccompat/v7``), which confluent-kafka's SchemaRegistryClient speaks.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from producer.errors import StackError

RUN_JAR = "quarkus-run.jar"
_CT = "application/vnd.schemaregistry.v1+json"


def run_jar(dist: Path) -> Path:
    """quarkus-run.jar sits at the archive root in 3.x; older layouts had it under quarkus-app/."""
    for candidate in (dist / RUN_JAR, dist / "quarkus-app" / RUN_JAR):
        if candidate.is_file():
            return candidate
    raise StackError(f"{RUN_JAR} not found under {dist}; remove that directory to fetch it again")


def environment(*, bootstrap_servers: str, http_port: int, management_port: int) -> dict[str, str]:
    return {
        "APICURIO_STORAGE_KIND": "kafkasql",
        "APICURIO_KAFKASQL_BOOTSTRAP_SERVERS": bootstrap_servers,
        "QUARKUS_HTTP_HOST": "127.0.0.1",
        "QUARKUS_HTTP_PORT": str(http_port),
        # The management interface (health, metrics) listens on all addresses unless told otherwise.
        "QUARKUS_MANAGEMENT_HOST": "127.0.0.1",
        "QUARKUS_MANAGEMENT_PORT": str(management_port),
    }


def jvm_args(java: Path, jar: Path, *, tag: str, compatibility: str) -> list[str]:
    """``tag`` is a -D property naming our state directory, so the process can be recognised in /proc."""
    return [str(java), "-Xms64m", "-Xmx512m", "-XX:+ExitOnOutOfMemoryError", f"-Dhdrlog.stack={tag}",
            # The default global rule (used while no explicit one is stored); set_compatibility() stores it too.
            f"-Dapicurio.rules.global.compatibility={compatibility}", "-jar", str(jar)]


class RegistryClient:
    """The few registry calls the stack itself makes; HTTP failures become StackError."""

    def __init__(self, *, api_url: str, management_url: str) -> None:
        self._api = api_url
        self._management = management_url

    def _call(self, method: str, url: str, body: object | None = None) -> tuple[int, str]:
        """(status, body); status 0 when nothing answered."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, method=method, data=data, headers={"Content-Type": _CT, "Accept": _CT})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""

    def ready(self) -> bool:
        """Quarkus's readiness checks pass (storage included) and the ccompat API answers."""
        return (self._call("GET", f"{self._management}/health/ready")[0] == 200
                and self._call("GET", f"{self._api}/subjects")[0] == 200)

    def compatibility(self) -> str | None:
        code, text = self._call("GET", f"{self._api}/config")
        if code != 200:
            return None
        level = json.loads(text).get("compatibilityLevel")
        return str(level) if level is not None else None

    def set_compatibility(self, level: str) -> None:
        """Store ``level`` as the global COMPATIBILITY rule; idempotent, verified by reading it back.

        Stored explicitly even when the start-up default already reports it, so the
        rule lives in the registry's data (kafkasql) rather than in how it was started.
        """
        code, text = self._call("PUT", f"{self._api}/config", {"compatibility": level})
        if code != 200:
            raise StackError(f"setting the registry's global compatibility to {level} failed: "
                             f"HTTP {code} {text[:200]}")
        now = self.compatibility()
        if now != level:
            raise StackError(f"the registry's global compatibility is {now}, not {level}, after setting it")
