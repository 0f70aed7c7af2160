"""The install is reproducible: requirements.lock pins every Python package with its hashes, it covers
every dependency pyproject.toml names (at a version the specifier allows), and the environment the
tests run in holds exactly its versions (scripts/setup.sh installs from it with --require-hashes)."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"


def _pins() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes), from the lock's ``name==version \\`` entries and their hash lines."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text()):
        head = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\]+)", block)
        if head is not None:
            pins[canonicalize_name(head[1])] = (head[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def test_every_package_is_pinned_with_hashes() -> None:
    pins = _pins()
    assert len(pins) > 30
    entries = [line for line in LOCK.read_text().splitlines() if line and not line.startswith((" ", "#"))]
    assert len(entries) == len(pins), [e for e in entries if "==" not in e]
    assert all(hashes for _v, hashes in pins.values()), [n for n, (_v, h) in pins.items() if not h]


def test_the_lock_covers_what_pyproject_asks_for() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    wanted += [Requirement(r) for r in project["project"]["optional-dependencies"]["dev"]]
    wanted += [Requirement(r) for r in project["build-system"]["requires"]]
    pins = _pins()
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in pins]
    assert missing == []
    outside = [f"{r} locked at {pins[canonicalize_name(r.name)][0]}" for r in wanted
               if not r.specifier.contains(pins[canonicalize_name(r.name)][0], prereleases=True)]
    assert outside == []


def test_the_environment_is_the_lock() -> None:
    differ = {}
    for name, (version, _hashes) in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            differ[name] = (version, installed)
    assert differ == {}
