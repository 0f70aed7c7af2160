"""Finding a Java runtime new enough for each service.

Kafka 4.1 runs on Java 17+, Apicurio Registry 3.3 needs Java 21+.  Distributions
often keep several JDKs under /usr/lib/jvm with an older one as the default
``java``, so we look at every candidate's major version instead of trusting PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from producer.errors import StackError

JVM_ROOT = Path("/usr/lib/jvm")


def java_major(java: Path) -> int | None:
    """The major version of the JDK ``java`` belongs to, or None if it cannot be told.

    The JDK's ``release`` file is read first: it costs nothing, whereas
    ``java -version`` starts a JVM.
    """
    try:
        home = java.resolve().parent.parent
        text = (home / "release").read_text()
    except OSError:
        text = ""
    m = re.search(r'^JAVA_VERSION="(?:1\.)?(\d+)', text, re.MULTILINE)
    if m:
        return int(m.group(1))
    try:
        res = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(?:1\.)?(\d+)', res.stderr)
    return int(m.group(1)) if m else None


def _candidates() -> list[Path]:
    found = [p for p in sorted(JVM_ROOT.glob("*/bin/java")) if p.is_file()]
    on_path = shutil.which("java")
    if on_path:
        found.append(Path(on_path))
    return found


def find_java(minimum: int, *, prefer: Path | None = None, purpose: str) -> Path:
    """A ``java`` binary of major version >= ``minimum``.

    ``prefer`` (an explicit setting) wins if it qualifies and is an error if it
    does not; otherwise the default ``java`` is used when new enough (it is what
    the user expects to run), else the newest JDK under /usr/lib/jvm.
    """
    if prefer is not None:
        major = java_major(prefer)
        if major is None or major < minimum:
            raise StackError(f"{prefer} is not a Java {minimum}+ runtime ({purpose} needs one)")
        return prefer
    on_path = shutil.which("java")
    if on_path and (java_major(Path(on_path)) or 0) >= minimum:
        return Path(on_path)
    best = max(((java_major(p) or 0, p) for p in _candidates()), default=(0, None))
    if best[1] is None or best[0] < minimum:
        override = " or set HDRLOG_JAVA21 to its java binary" if minimum >= 21 else ""
        raise StackError(f"{purpose} needs Java {minimum} or later: install a JDK under {JVM_ROOT} "
                         f"(e.g. temurin-{max(minimum, 21)}-jdk){override}")
    return best[1]
