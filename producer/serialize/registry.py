"""Schema registry access (Confluent-compatible API), errors classified here.

Connection failures and 5xx answers are retriable; 4xx answers (an
incompatible schema, a bad subject) are not and carry the registry's reason.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx2
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from producer.errors import TLS_REFUSALS, RegistryError
from producer.serialize.schemas import Subject

#: the client's settings that it takes as numbers only (the config file's properties are strings)
NUMERIC = frozenset({"timeout", "max.retries", "retries.wait.ms", "retries.max.wait.ms", "cache.capacity",
                     "cache.latest.ttl.sec"})
#: what the registry client raises for an answer of the wrong shape (not JSON, a list for an object, a
#: missing or mistyped field): the client reads answers without checking them
ANSWER_ERRORS = (ValueError, TypeError, KeyError, AttributeError)
#: what the registry client raises for the registry's own reasons: classified below; anything
#: else is a bug and propagates (it must not be retried for the connect timeout)
CLIENT_ERRORS = (SchemaRegistryError, httpx2.HTTPError, OSError, *ANSWER_ERRORS)


def _answer_text(message: str) -> str:
    """The registry's error message on one line: an HTML page (a proxy's, a gateway's) by its title."""
    title = re.search(r"<title>(.*?)</title>", message, re.IGNORECASE | re.DOTALL)
    text = title.group(1) if title else message
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:200] + "..."


def _tls_refusal(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under ``exc`` that retrying cannot mend (the certificate, TLS to a plaintext port)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and any(t in str(seen).lower() for t in TLS_REFUSALS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _refused(url: str, what: str, status: int, message: str) -> RegistryError:
    """The registry answered ``status`` (an error): retriable for 5xx, 408 and 429."""
    text = f"schema registry at {url} refused {what}: {_answer_text(message)} (HTTP {status})"
    if status in (401, 403):
        text += "; check registry.username and registry.password_file"
    err = RegistryError(text, retriable=status >= 500 or status in (408, 429))
    err.status = status
    return err


def _classify(exc: Exception, url: str, what: str) -> RegistryError:
    if isinstance(exc, SchemaRegistryError):
        err = _refused(url, what, exc.http_status_code or 0, str(exc.error_message))
        err.code = exc.error_code
        return err
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, ANSWER_ERRORS):  # an answer that is not the registry's API (JSON, fields)
        return RegistryError(f"schema registry at {url} answered {what} with something unexpected: "
                             f"{type(exc).__name__}: {reason}")
    tls = _tls_refusal(exc)
    if tls is not None:
        return RegistryError(f"the TLS handshake with the schema registry at {url} failed (registry.properties "
                             f"ssl.ca.location, the URL's scheme): {str(tls).splitlines()[0]}")
    return RegistryError(f"cannot reach schema registry at {url}: {reason}", retriable=True)


class Registry:
    """A thin, error-classifying wrapper of confluent-kafka's SchemaRegistryClient."""

    def __init__(self, url: str, properties: Mapping[str, str] | None = None) -> None:
        # the client's own retries off: retrying is the callers' one policy (producer/retry.py), in one place
        conf: dict[str, Any] = {"url": url, "timeout": 10, "max.retries": 0}
        conf.update({k: int(v) if k in NUMERIC and str(v).isdigit() else v for k, v in (properties or {}).items()})
        self.url = url
        self._props = dict(properties or {})
        try:
            self._client = SchemaRegistryClient(conf)
        except (ValueError, TypeError) as exc:
            raise RegistryError(f"invalid schema registry settings: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> SchemaRegistryClient:
        return self._client

    def register(self, subject: str, schema_text: str) -> int:
        """Register (or find) the Avro schema under ``subject``; returns its id."""
        try:
            return _schema_id(self._client.register_schema(subject, Schema(schema_text, "AVRO")))
        except CLIENT_ERRORS as exc:
            raise _classify(exc, self.url, f"registering {subject}") from exc

    def lookup(self, subject: Subject) -> int:
        """The id of ``subject.schema`` under ``subject``; a non-retriable error naming the gap if absent."""
        try:
            found = self._client.lookup_schema(subject.name, Schema(subject.schema.text, "AVRO"))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise RegistryError(
                    f"schema {subject.schema.name} is not registered under {subject.name} "
                    f"(registry.auto_register is false): the registry says \"{exc.error_message}\"; "
                    "register it with `hdrlog schemas register`") from exc
            raise _classify(exc, self.url, f"looking up {subject.name}") from exc
        except CLIENT_ERRORS as exc:
            raise _classify(exc, self.url, f"looking up {subject.name}") from exc
        try:
            return _schema_id(found.schema_id)
        except ValueError as exc:
            raise _classify(exc, self.url, f"looking up {subject.name}") from exc

    def check(self, subject: Subject) -> Compatibility:
        """Test ``subject.schema`` against the subject's latest version under the registry's rules."""
        name = quote(subject.name, safe="")
        body = {"schema": subject.schema.text}
        versions = self._get(f"/subjects/{name}/versions", missing=[])
        if not versions:
            return Compatibility(subject.name, False, False, True, "")
        try:
            self._client.lookup_schema(subject.name, Schema(subject.schema.text, "AVRO"))
            return Compatibility(subject.name, True, True, True, "")
        except CLIENT_ERRORS as exc:
            if not isinstance(exc, SchemaRegistryError) or exc.http_status_code != 404:
                raise _classify(exc, self.url, f"looking up {subject.name}") from exc
        answer = self._post(f"/compatibility/subjects/{name}/versions/latest?verbose=true", body)
        if answer.get("is_compatible"):
            return Compatibility(subject.name, True, False, True, "")
        reason = "; ".join(str(m) for m in answer.get("messages") or []) or self._dry_run_reason(subject)
        level = self._get(f"/config/{name}?defaultToGlobal=true", missing={}).get("compatibilityLevel", "?")
        return Compatibility(subject.name, True, False, False,
                             f"not {level}-compatible with the latest version: {reason or 'no detail given'}")

    def _dry_run_reason(self, subject: Subject) -> str:
        """Apicurio's ccompat API gives no reason; its own API does, for a dry-run of the new version."""
        marker = "/apis/ccompat/"
        if marker not in self.url:
            return ""
        base = self.url.split(marker)[0] + "/apis/registry/v3"
        url = f"{base}/groups/default/artifacts/{quote(subject.name, safe='')}/versions?dryRun=true"
        try:
            r = self._request("POST", url, {"content": {"content": subject.schema.text,
                                                         "contentType": "application/json"}})
            doc = r.json()
        except (httpx2.HTTPError, ValueError):
            return ""
        causes = doc.get("causes") or []
        return ", ".join(f"{c.get('description')} at {c.get('context')}" for c in causes) or str(doc.get("detail", ""))

    def _request(self, method: str, url: str, body: dict[str, Any] | None = None) -> httpx2.Response:
        """One plain HTTP call with the client's credentials and TLS settings (for what its API lacks)."""
        with self._http() as client:
            return client.request(method, url, json=body)

    def _http(self) -> httpx2.Client:
        auth = self._props.get("basic.auth.user.info")
        user, _, password = (auth or "").partition(":")
        verify: Any = self._props.get("ssl.ca.location", True)
        cert: Any = None
        if self._props.get("ssl.certificate.location"):
            key = self._props.get("ssl.key.location")
            cert = (self._props["ssl.certificate.location"], key) if key else self._props["ssl.certificate.location"]
        return httpx2.Client(auth=(user, password) if auth else None, verify=verify, cert=cert, timeout=10)

    def _get(self, path: str, missing: Any) -> Any:
        try:
            r = self._request("GET", self.url.rstrip("/") + path)
        except httpx2.HTTPError as exc:
            raise RegistryError(f"cannot reach schema registry at {self.url}: {exc}", retriable=True) from exc
        if r.status_code == 404:
            return missing
        return self._json(r, path)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            r = self._request("POST", self.url.rstrip("/") + path, body)
        except httpx2.HTTPError as exc:
            raise RegistryError(f"cannot reach schema registry at {self.url}: {exc}", retriable=True) from exc
        return self._json(r, path)

    def _json(self, r: httpx2.Response, path: str) -> Any:
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if r.status_code >= 400:
            message = doc.get("message") if isinstance(doc, dict) else None
            raise _refused(self.url, path, r.status_code, str(message or r.text))
        if doc is None:
            raise RegistryError(f"schema registry at {self.url} answered {path} with something unexpected: "
                                f"not JSON: {_answer_text(r.text)}")
        return doc

    def check_api(self) -> None:
        """That ``url`` is a Confluent-compatible registry API (a RegistryError naming it if not), so a
        wrong path is one clear error at start and not a 404 for every schema id later."""
        if self._get("/schemas/types", missing=None) is None:
            raise RegistryError(f"{self.url} is not a Confluent-compatible schema registry API (no /schemas/types; "
                                "for Apicurio the URL ends in /apis/ccompat/v7)")

    def schema_text(self, schema_id: int) -> str:
        try:
            text = self._client.get_schema(schema_id).schema_str
            if not isinstance(text, str) or not text:
                raise ValueError(f"no schema text for id {schema_id}")
            return text
        except CLIENT_ERRORS as exc:
            raise _classify(exc, self.url, f"schema id {schema_id}") from exc


def _schema_id(value: Any) -> int:
    """A schema id from an answer: a non-negative integer (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"the schema id is {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Compatibility:
    """What the registry says of a local schema against a subject's latest version."""

    subject: str
    exists: bool  # the subject has a version already
    registered: bool  # this exact schema is already a version of the subject
    compatible: bool
    reason: str  # the registry's words when not compatible


def resolve(registry: Registry, subject: Subject, auto_register: bool) -> int:
    """The schema id to frame messages with: registered now, or (auto_register off) looked up."""
    if auto_register:
        return registry.register(subject.name, subject.schema.text)
    return registry.lookup(subject)

