#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Idempotent set-up of a development / CI machine (Debian 12, root).
# Called by `make run` and `make test`; safe to run again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  python3-bpfcc        # bcc (never the unrelated PyPI "bcc")
  python3-venv
  linux-headers-amd64  # BCC compiles against /lib/modules/$(uname -r)/build
  iproute2 iputils-ping tcpdump curl dnsutils util-linux procps bpftool unzip
  systemd              # `systemd-analyze verify` checks deploy/hdrlog-agent.service (util-linux: setpriv)
  python3-scapy        # independent packet parser/crafter for the tests
  docker-compose python3-yaml  # `docker-compose config` checks docker-compose.yml
  maven                # fetches Kafka and Apicurio from Maven Central
  openjdk-17-jre-headless
  gcc python3-dev      # the compiled fast path (producer/serialize/_fastpath.c) and the benchmark's sender
  libssl-dev           # the consumer's renderer hashes with libcrypto (producer/consumer/_render.c)
  tshark kcat pmacct   # the tools `hdrlog bench` measures the agent against
  python3-matplotlib   # the benchmark's chart
  wrk apache2-utils    # HTTP load generators: the ingest benchmark (wrk) and tests (ab)
  nginx-light openssl  # `stack up --secure`: the registry over HTTPS with basic auth (tlsproxy.py)
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# BCC needs /lib/modules/$(uname -r)/build.  Real hosts install the headers
# matching their kernel; here no such package exists, so -- only where the
# links are missing -- point them at the installed distro headers (network
# programs use only UAPI structs).
kmod="/lib/modules/$(uname -r)"
if [ ! -e "$kmod/build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
  if [ -z "$hdr" ]; then
    echo "setup: no kernel headers under /usr/src; install linux-headers-$(uname -r)" >&2
    exit 1
  fi
  echo "setup: linking $kmod/build -> $hdr (no headers package matches $(uname -r))"
  mkdir -p "$kmod"
  ln -sfn "$hdr" "$kmod/build"
  [ -e "$kmod/source" ] || ln -sfn "${common:-$hdr}" "$kmod/source"
fi

# The agent's own system user: started as root, the agent becomes it once attached (producer/privileges.py).
if ! getent passwd hdrlog >/dev/null; then
  echo "setup: creating the system user hdrlog (the agent becomes it once attached)"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hdrlog
fi

# Java 21+ for the schema registry (Apicurio 3.x): any Temurin JDK will do.
java21=""
for home in /usr/lib/jvm/temurin-*; do
  major=$(basename "$home" | sed -n 's/^temurin-\([0-9]*\).*/\1/p')
  if [ -n "$major" ] && [ "$major" -ge 21 ] && [ -x "$home/bin/java" ]; then java21=$home; fi
done
if [ -z "$java21" ] && [ -z "${HDRLOG_JAVA21:-}" ]; then
  echo "setup: warning: no Java 21+ (Temurin) under /usr/lib/jvm; the local schema registry needs one" >&2
fi

# The virtualenv: from the distro python (bcc is built for it), seeing its
# site-packages so that `import bcc` works.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
# re-install when the project's definition or a compiled module's source changes
stamp=.venv/.installed-$(cat pyproject.toml requirements.lock setup.py producer/serialize/_fastpath.c producer/serialize/_rows.c producer/ingest/_generic.c producer/consumer/_reader.c producer/consumer/_render.c \
  | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  # every Python package at the version and hash of requirements.lock (`make lock` writes it),
  # pip and the build backend included; then hdrlog itself, built with those (nothing unpinned)
  .venv/bin/python -m pip install -q --require-hashes -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "setup: ok"
