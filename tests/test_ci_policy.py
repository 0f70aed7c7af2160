"""Under CI=true a skipped test is a failure (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = '''
import pytest

def test_skipped():
    pytest.skip("no thing here")
'''


def test_skip_fails_under_ci(tmp_path) -> None:
    probe = ROOT / "tests" / f"test_zz_probe_{os.getpid()}.py"
    probe.write_text(PROBE)
    try:
        def run(ci: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "CI": ci})

        under_ci, local = run("true"), run("")
    finally:
        probe.unlink()
    assert under_ci.returncode == 1 and "1 failed" in under_ci.stdout
    assert "skipped under CI=true (a skip is a failure here): Skipped: no thing here" in under_ci.stdout
    assert local.returncode == 0 and "1 skipped" in local.stdout
