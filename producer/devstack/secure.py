"""``hdrlog stack up --secure``: a generated CA, the broker's certificate and the SASL users.

The secure listener (``SASL_SSL`` on ``StackSettings.secure_port``) takes
SCRAM-SHA-512 and PLAIN over TLS; a client certificate is requested, not
required there.  The mTLS listener (``StackSettings.mtls_port``) requires one.
Everything lives in ``<stack>/secure/`` (mode 0700, files 0600), made once and
kept: the CA (``ca.pem``), the broker's key and chain (``broker.pem``, 127.0.0.1
and localhost), a client certificate the CA signed (``client.pem``, ``client.key``) and ``credentials.json``: the users
and their passwords (random, for this machine only).  Tests and the README's
examples read them from there.

The registry over HTTPS with basic auth (``StackSettings.secure_registry_port``)
is nginx in front of Apicurio: Apicurio's own basic auth needs an OpenID
Connect server.  Its user is ``REGISTRY_USER``, its password in
``credentials.json`` and its SHA-512 crypt hash in ``registry.htpasswd``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from producer.errors import StackError

#: the users the secure listener knows: SCRAM-SHA-512 and PLAIN
SCRAM_USER, PLAIN_USER = "hdrlog", "hdrlogplain"  # (JAAS option names take no dash)
#: the registry's basic-auth user (the TLS proxy's)
REGISTRY_USER = "hdrlog"
VALID_DAYS = 3650


@dataclass(frozen=True, slots=True)
class SecureFiles:
    """Where the secure listener's material is (``make`` creates it)."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def broker(self) -> Path:
        return self.root / "broker.pem"  # the broker's key, then its certificate and the CA's

    @property
    def client_cert(self) -> Path:
        return self.root / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.root / "client.key"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    @property
    def htpasswd(self) -> Path:
        return self.root / "registry.htpasswd"

    def passwords(self) -> dict[str, str]:
        """Kafka's users: user -> password."""
        return dict(json.loads(self.credentials.read_text(encoding="utf-8"))["users"])

    def registry_password(self) -> str:
        """``REGISTRY_USER``'s password at the registry's TLS proxy."""
        return str(json.loads(self.credentials.read_text(encoding="utf-8"))["registry"][REGISTRY_USER])

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.ca, self.broker, self.client_cert, self.client_key, self.credentials))

    def has_registry_user(self) -> bool:
        try:
            return self.htpasswd.is_file() and bool(self.registry_password())
        except (OSError, ValueError, KeyError):
            return False


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hdrlog local stack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey, *,
          ca: bool, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(signer, hashes.SHA256())


def make_ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (P-256); also what tests use for a CA the broker's clients do not trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _cert(common, key, _name(common), key, ca=True)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure(root: Path) -> SecureFiles:
    """The material under ``root`` (created once; kept, so that clients' copies of the CA stay valid).
    It is made in a directory beside ``root`` and renamed into place: an interrupted run leaves none."""
    files = SecureFiles(root)
    if files.exists():
        if not files.has_registry_user():  # (material made before the registry's proxy existed: the CA kept)
            _add_registry_user(files, files.root)
        return files
    marker = root / "enabled"
    enabled = marker.exists()
    if root.exists():  # incomplete (an older run's): made again
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".secure-", dir=root.parent))  # mode 0700
    try:
        _make(SecureFiles(tmp))
        if enabled:
            (tmp / "enabled").touch()
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def _make(files: SecureFiles) -> None:
    ca_key, ca = make_ca("hdrlog local stack CA")
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker = _cert("127.0.0.1", broker_key, ca.subject, ca_key, ca=False, server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("hdrlog-agent", client_key, ca.subject, ca_key, ca=False)
    _write(files.ca, _pem(ca))
    _write(files.broker, _key_pem(broker_key) + _pem(broker) + _pem(ca))
    _write(files.client_cert, _pem(client))
    _write(files.client_key, _key_pem(client_key))
    users = {SCRAM_USER: secrets.token_urlsafe(18), PLAIN_USER: secrets.token_urlsafe(18)}
    _write(files.credentials, json.dumps({"users": users, "mechanisms": {SCRAM_USER: "SCRAM-SHA-512",
                                                                        PLAIN_USER: "PLAIN"}}, indent=1).encode())
    _add_registry_user(files, files.root)


def _add_registry_user(files: SecureFiles, scratch: Path) -> None:
    """A random password for ``REGISTRY_USER``: into credentials.json, and hashed (SHA-512 crypt, by
    ``openssl passwd``, the password on its stdin) into registry.htpasswd; each file replaced by a rename."""
    password = secrets.token_urlsafe(18)
    try:
        hashed = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True,
                                text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise StackError(f"hashing the registry's password with openssl failed: {exc}") from exc
    creds = json.loads(files.credentials.read_text(encoding="utf-8"))
    creds["registry"] = {REGISTRY_USER: password}
    for path, data in ((files.htpasswd, f"{REGISTRY_USER}:{hashed}\n".encode()),
                       (files.credentials, json.dumps(creds, indent=1).encode())):
        tmp = scratch / f".{path.name}.tmp"
        _write(tmp, data)
        os.rename(tmp, path)
