"""Clear one-line errors for kernels that cannot run the capture program."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.capture.program import check_kernel, check_privileges
from producer.errors import CaptureError, PrivilegeError


def test_old_kernel_without_ring_buffer(tmp_path: Path) -> None:
    (tmp_path / "5.4.0-1" / "build").mkdir(parents=True)
    with pytest.raises(CaptureError, match=r"kernel 5.4.0-1 has no BPF ring buffer \(needs Linux 5.8"):
        check_kernel("5.4.0-1", tmp_path)


def test_missing_headers(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="kernel headers for 6.1.0-9 are missing.*linux-headers-6.1.0-9"):
        check_kernel("6.1.0-9", tmp_path)


def test_good_kernel(tmp_path: Path) -> None:
    (tmp_path / "6.18.1" / "build").mkdir(parents=True)
    check_kernel("6.18.1", tmp_path)


@pytest.mark.parametrize(("caps", "missing"), [
    (0, "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"),
    (1 << 12, "CAP_BPF, CAP_PERFMON"),
    (1 << 39 | 1 << 38, "CAP_NET_ADMIN"),
])
def test_missing_capabilities_named(caps: int, missing: str) -> None:
    with pytest.raises(PrivilegeError, match=f"capturing needs {missing} "):
        check_privileges(caps)


def test_enough_capabilities() -> None:
    check_privileges(1 << 39 | 1 << 38 | 1 << 12)
    check_privileges(1 << 21 | 1 << 12)  # CAP_SYS_ADMIN stands in for BPF and PERFMON
