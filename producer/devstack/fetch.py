"""Fetching Kafka, Apicurio Registry, Kafka Connect and OpenSearch from Maven Central, once per version.

Maven does the downloading (checksums, mirrors and proxies as the user has set
them up) and keeps its cache in ~/.m2 as usual; we only copy what we need into
the stack directory.  A ``.complete`` marker is written last, so an interrupted
fetch is redone rather than run half-copied.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from producer.errors import StackError

_SLF4J_LOG4J2 = "2.24.3"  # log4j2 release Kafka 4.1 is built against (it uses slf4j-api 1.7.36)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <!-- Written by hdrlog: only a dependency list for `mvn dependency:copy-dependencies`. -->
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.hdrlog.devstack</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_CONNECT_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <!-- Written by hdrlog: only a dependency list for `mvn dependency:copy-dependencies`. -->
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.hdrlog.devstack</groupId>
  <artifactId>connect-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId><version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>connect-file</artifactId><version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>io.apicurio</groupId><artifactId>apicurio-registry-utils-converter</artifactId>
      <version>{converter}</version>
    </dependency>
  </dependencies>
</project>
"""

COMPLETE = ".complete"


class Fetcher:
    """Copies the Kafka class path and the Apicurio distribution into ``root``."""

    def __init__(self, root: Path, say: Callable[[str], None]) -> None:
        self._root = root
        self._say = say
        self.log = root / "maven.log"

    def kafka(self, version: str, libs: Path) -> None:
        """``libs`` ends up holding every jar Kafka ``version`` needs at run time."""
        if (libs / COMPLETE).exists():
            return
        work = self._root / f"kafka-{version}-pom"
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(_POM.format(kafka=version, log4j=_SLF4J_LOG4J2))
        shutil.rmtree(libs, ignore_errors=True)
        self._say(f"fetching Kafka {version} (kafka_2.13, kafka-tools) with Maven; once per version")
        t0 = time.monotonic()
        self._mvn(["dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
                  work, f"Kafka {version}")
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise StackError(f"Maven reported success but no Kafka jar is in {libs} (see {self.log})")
        (libs / COMPLETE).touch()
        self._say(f"Kafka {version} ready in {libs} ({time.monotonic() - t0:.0f} s)")

    def apicurio(self, version: str, dest: Path) -> None:
        """``dest`` ends up holding the unpacked Apicurio Registry ``version`` (quarkus-run.jar and its libs)."""
        if (dest / COMPLETE).exists():
            return
        download = self._root / "download"
        self._say(f"fetching Apicurio Registry {version} (about 160 MB) with Maven; once per version")
        t0 = time.monotonic()
        self._mvn(["dependency:copy", f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
                   f"-DoutputDirectory={download}", "-Dmdep.overWriteReleases=true"],
                  self._root, f"Apicurio Registry {version}")
        archive = download / f"apicurio-registry-app-{version}-all.tar.gz"
        if not archive.is_file():
            raise StackError(f"Maven reported success but {archive} is missing (see {self.log})")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        try:
            res = subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest), "--no-same-owner"],
                                 capture_output=True, text=True, check=False)
        except OSError as exc:
            raise StackError(f"unpacking {archive.name} failed: {exc}") from exc
        if res.returncode != 0:
            raise StackError(f"unpacking {archive.name} failed: {_last_line(res.stderr)}")
        archive.unlink()  # ~/.m2 keeps a copy; this one only doubled the disk use
        (dest / COMPLETE).touch()
        self._say(f"Apicurio Registry {version} ready in {dest} ({time.monotonic() - t0:.0f} s)")

    def connect(self, kafka_version: str, converter: str, libs: Path) -> None:
        """``libs`` ends up holding Kafka Connect's class path, the FileStream connectors and the converter."""
        if (libs / COMPLETE).exists():
            return
        work = self._root / f"connect-{kafka_version}-pom"
        work.mkdir(parents=True, exist_ok=True)
        (work / "pom.xml").write_text(_CONNECT_POM.format(kafka=kafka_version, log4j=_SLF4J_LOG4J2,
                                                          converter=converter))
        shutil.rmtree(libs, ignore_errors=True)
        self._say(f"fetching Kafka Connect {kafka_version} and the Apicurio converter {converter} with Maven; once")
        t0 = time.monotonic()
        self._mvn(["dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
                  work, f"Kafka Connect {kafka_version}")
        if not any(libs.glob("connect-runtime-*.jar")):
            raise StackError(f"Maven reported success but no connect-runtime jar is in {libs} (see {self.log})")
        (libs / COMPLETE).touch()
        self._say(f"Kafka Connect ready in {libs} ({time.monotonic() - t0:.0f} s)")

    def opensearch(self, version: str, dest: Path, owner: int | None) -> None:
        """``dest`` ends up holding the unpacked OpenSearch ``version`` (integ-test zip), owned by ``owner``."""
        if (dest / COMPLETE).exists():
            return
        download = self._root / "download"
        self._say(f"fetching OpenSearch {version} (about 130 MB) with Maven; once per version")
        t0 = time.monotonic()
        self._mvn(["dependency:copy", f"-Dartifact=org.opensearch.distribution.integ-test-zip:opensearch:{version}:zip",
                   f"-DoutputDirectory={download}", "-Dmdep.overWriteReleases=true"], self._root,
                  f"OpenSearch {version}")
        archive = download / f"opensearch-{version}.zip"
        if not archive.is_file():
            raise StackError(f"Maven reported success but {archive} is missing (see {self.log})")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        try:  # unzip keeps the scripts' exec bits (Python's zipfile does not)
            res = subprocess.run(["unzip", "-q", str(archive), "-d", str(dest)], capture_output=True, text=True,
                                 check=False)
        except OSError as exc:
            raise StackError(f"unpacking {archive.name} failed: {exc}") from exc
        if res.returncode != 0:
            raise StackError(f"unpacking {archive.name} failed: {_last_line(res.stderr)}")
        archive.unlink()
        if owner is not None:
            from producer.devstack.opensearch import chown_tree

            chown_tree(dest, owner)
        (dest / COMPLETE).touch()
        self._say(f"OpenSearch {version} ready in {dest} ({time.monotonic() - t0:.0f} s)")

    def _mvn(self, args: list[str], cwd: Path, what: str) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("Maven (mvn) is not installed; it fetches Kafka and the registry (run scripts/setup.sh)")
        self._root.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as out:
            out.write(f"\n$ mvn {' '.join(args)}\n")
            out.flush()
            try:
                res = subprocess.run([mvn, "-B", "-q", "-Dstyle.color=never", *args], cwd=cwd, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
            except OSError as exc:
                raise StackError(f"running Maven failed: {exc}") from exc
        if res.returncode != 0:
            raise StackError(f"fetching {what} with Maven failed: {_last_error(self.log)} (full output in {self.log})")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Maven colours some lines even in batch mode
_GOAL_FAILED = re.compile(r"Failed to execute goal \S+ \([^)]*\)(?: on project \S+)?: ")


def _last_error(log: Path) -> str:
    """The most telling line of Maven's last run: its first [ERROR] (minus the boilerplate), else its last line."""
    try:
        run = _ANSI.sub("", log.read_text(errors="replace").rsplit("\n$ mvn ", 1)[-1])
    except OSError:
        return "no output"
    errors = [line[len("[ERROR]"):].strip() for line in run.splitlines() if line.startswith("[ERROR]")]
    errors = [e for e in errors if e]
    return _GOAL_FAILED.sub("", errors[0])[:240] if errors else _last_line(run)
