"""The agent's local HTTP server (telemetry/server.py, granian) on real sockets: TLS keys it takes or
refuses in one line, the bearer token on every route, 404/405, a taken port, and a stop that neither
hangs on a silent client nor leaves the port bound.  The ingest routes are tested with the agent
(tests/test_ingest.py)."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from producer.errors import ConfigError
from producer.telemetry.server import ServerSecurity, TelemetryServer, tls_files

TOKEN = "server-test-token"


def _pair(tmp_path: Path, name: str, key: Any, password: bytes | None = None) -> tuple[str, str]:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    signing = None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, signing))
    enc = (serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    return str(cert_file), str(key_file)


def _server(security: ServerSecurity | None = None, port: int = 0) -> TelemetryServer:
    return TelemetryServer("127.0.0.1", port, status=lambda: {"ok": True}, metrics=lambda: b"hdrlog_up 1\n",
                           security=security)


@pytest.mark.parametrize(("name", "key"), [
    ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("p256", ec.generate_private_key(ec.SECP256R1())),
    ("ed25519", ed25519.Ed25519PrivateKey.generate()),
])
def test_https_with_the_keys_granian_takes(tmp_path: Path, name: str, key: Any) -> None:
    server = _server(ServerSecurity(TOKEN, tls_files(*_pair(tmp_path, name, key))))
    port = server.start()
    try:
        url = f"https://127.0.0.1:{port}"
        got = httpx2.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, verify=False)
        assert (got.status_code, got.text) == (200, "hdrlog_up 1\n")
        got = httpx2.get(url + "/api/v1/status", verify=False)
        assert (got.status_code, got.headers["www-authenticate"]) == (401, "Bearer")
        with pytest.raises(httpx2.HTTPError):  # HTTPS only
            httpx2.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.stop()


@pytest.mark.parametrize(("name", "key", "password", "message"), [
    ("p521", ec.generate_private_key(ec.SECP521R1()), None, "secp521r1 keys are not supported"),
    ("ed448", ed448.Ed448PrivateKey.generate(), None, "Ed448PrivateKey keys are not supported"),
    ("encrypted", ec.generate_private_key(ec.SECP256R1()), b"pw", "encrypted"),
])
def test_a_key_granian_would_abort_on_is_one_config_error(tmp_path: Path, name: str, key: Any,
                                                           password: bytes | None, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^invalid value for telemetry.tls_key_file: .*{message}") as err:
        tls_files(*_pair(tmp_path, name, key, password))
    assert "\n" not in str(err.value)


def test_routes_the_token_and_a_silent_client_at_stop() -> None:
    server = _server(ServerSecurity(TOKEN))
    port = server.start()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    silent = socket.create_connection(("127.0.0.1", port))  # connects and never sends a request
    try:
        assert httpx2.get(url + "/api/v1/status", headers=auth).json() == {"ok": True}
        assert httpx2.get(url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        got = httpx2.post(url + "/metrics", headers=auth)
        assert (got.status_code, got.headers["allow"], got.json()) == (405, "GET", {"error": "/metrics takes GET"})
        got = httpx2.get(url + "/nope", headers=auth)
        assert (got.status_code, got.json()) == (404, {"error": "no such path: /nope"})
        # the ingest routes exist but this server has no ingest (as with JSON-lines output)
        got = httpx2.post(url + "/api/v1/logging", headers=auth, content=b"{}")
        assert got.status_code == 503 and "the ingest is off" in got.json()["error"]
    finally:
        server.stop()
        silent.close()
    with pytest.raises(httpx2.ConnectError):  # the port is released
        httpx2.get(url + "/metrics")


def test_a_taken_port_is_one_config_error() -> None:
    first = _server()
    port = first.start()
    try:
        with pytest.raises(ConfigError, match=f"^invalid value for telemetry.listen: cannot listen on "
                                              f"127.0.0.1:{port}: Address already in use$"):
            _server(port=port).start()
    finally:
        first.stop()
