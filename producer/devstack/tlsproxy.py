"""The registry over HTTPS with basic auth (``hdrlog stack up --secure``): nginx in front of Apicurio.

Apicurio 3's basic auth exchanges the user's password for an OpenID Connect
token, so it needs an OIDC server; an authenticating TLS proxy is the other
way registries are run, and the one here.  nginx (Debian's ``nginx-light``)
listens on 127.0.0.1 with the stack CA's server certificate, checks
``Authorization: Basic`` against ``registry.htpasswd`` (secure.py) and passes
what it lets through to Apicurio's plain port.  It runs as one process
(``master_process off``): it reads the password file per request, and that
file is its owner's alone.  Development and tests only, like the rest of the
stack.
"""

from __future__ import annotations

import base64
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from producer.devstack.secure import REGISTRY_USER, SecureFiles
from producer.errors import StackError


def nginx() -> Path:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        raise StackError("nginx is not installed (the registry's TLS proxy for `stack up --secure`): "
                         "run scripts/setup.sh")
    return Path(found)


def config(*, port: int, upstream_port: int, files: SecureFiles, workdir: Path) -> str:
    """nginx.conf: every path absolute, nothing outside ``workdir`` and the secure material."""
    return "\n".join([
        "# Written by hdrlog on every start; edits are overwritten.",
        "daemon off;",
        "master_process off;",
        f"pid {workdir}/registry-tls.nginx.pid;",
        f"error_log {workdir}/registry-tls.log warn;",
        "events { worker_connections 512; }",
        "http {",
        "  access_log off;",
        "  server_tokens off;",
        *(f"  {kind}_temp_path {workdir}/registry-tls-tmp/{kind};"
          for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        "  server {",
        f"    listen 127.0.0.1:{port} ssl;",
        f"    ssl_certificate {files.broker};",  # (the key, then the chain: nginx takes each from the one file)
        f"    ssl_certificate_key {files.broker};",
        "    ssl_protocols TLSv1.2 TLSv1.3;",
        '    auth_basic "hdrlog schema registry";',
        f"    auth_basic_user_file {files.htpasswd};",
        "    location / {",
        f"      proxy_pass http://127.0.0.1:{upstream_port};",
        "      proxy_set_header Host $host;",
        "      proxy_set_header Authorization \"\";",  # (Apicurio has no use for it)
        "    }",
        "  }",
        "}",
        "",
    ])


def argv(binary: Path, conf: Path, workdir: Path) -> list[str]:
    return [str(binary), "-c", str(conf), "-p", str(workdir)]


class ProxyProbe:
    """Ready when the ccompat API answers 200 over HTTPS (the CA checked) with the user's password."""

    def __init__(self, url: str, files: SecureFiles) -> None:
        self._url = url
        self._files = files

    def __call__(self) -> bool:
        token = base64.b64encode(f"{REGISTRY_USER}:{self._files.registry_password()}".encode()).decode()
        req = urllib.request.Request(f"{self._url}/subjects", headers={"Authorization": f"Basic {token}"})
        ctx = ssl.create_default_context(cafile=str(self._files.ca))
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False
