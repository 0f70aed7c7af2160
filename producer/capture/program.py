"""Compile and load bpf/capture.bpf.c with BCC; read its counters, set its config.

Errors from bcc are classified here: a missing privilege becomes
PrivilegeError, anything else about compiling or loading a CaptureError, each
one line.  Compile-time options reach the C side as -D flags.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from producer import abi
from producer.errors import CaptureError, PrivilegeError

# CAP_NET_ADMIN=12, CAP_SYS_ADMIN=21, CAP_PERFMON=38, CAP_BPF=39
_CAP_NET_ADMIN, _CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 12, 21, 38, 39


def bpf_source_dir() -> Path:
    """bpf/ beside the package (source checkout) or installed as package data."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "bpf", here / "bpf"):
        if (cand / "capture.bpf.c").is_file():
            return cand
    raise CaptureError("bpf/capture.bpf.c not found beside the producer package")


def effective_caps(status_path: str = "/proc/self/status") -> int:
    with open(status_path, encoding="ascii") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileges(caps: int | None = None) -> None:
    """Raise PrivilegeError naming every capability the agent lacks."""
    caps = effective_caps() if caps is None else caps
    missing = []
    if not caps & (1 << _CAP_BPF | 1 << _CAP_SYS_ADMIN):
        missing.append("CAP_BPF")
    if not caps & (1 << _CAP_PERFMON | 1 << _CAP_SYS_ADMIN):
        missing.append("CAP_PERFMON")
    if not caps & (1 << _CAP_NET_ADMIN):
        missing.append("CAP_NET_ADMIN")
    if missing:
        raise PrivilegeError(
            "capturing needs " + ", ".join(missing) + " (run as root or grant these capabilities)"
        )


def check_kernel(release: str | None = None, modules: Path = Path("/lib/modules")) -> None:
    """Raise CaptureError when this kernel cannot run the capture program."""
    release = release or os.uname().release
    nums = [int(x) for x in re.findall(r"\d+", release)[:2]]
    if len(nums) == 2 and tuple(nums) < (5, 8):
        raise CaptureError(f"kernel {release} has no BPF ring buffer (needs Linux 5.8 or later)")
    if not (modules / release / "build").exists():
        raise CaptureError(
            f"kernel headers for {release} are missing: BCC compiles against "
            f"{modules / release / 'build'} (install linux-headers-{release})")


@dataclass(frozen=True, slots=True)
class ProgramOptions:
    ringbuf_pages: int  # capture.ringbuf_pages: its one default is in producer/config.py


_MADV_PAGEOUT = 21  # Linux 5.4
_COMPILER_LIBS = re.compile(r"/lib(LLVM|clang-cpp)[^/]*\.so")


def return_compiler_memory() -> None:
    """Give back what compiling the program left resident and will not use again.

    BCC compiles in-process: LLVM's and clang's code pages (~80 MiB resident) and the
    compile's freed heap (~35 MiB) would otherwise stay in the agent's RSS for its whole
    life.  The heap goes back with ``malloc_trim``; the libraries' pages are paged out
    (``MADV_PAGEOUT``: file-backed, so they simply fault in again if ever used).  Best
    effort: an older kernel refuses the advice and nothing changes.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with contextlib.suppress(AttributeError):
        libc.malloc_trim(0)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return
    for line in maps:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and _COMPILER_LIBS.search(parts[5]):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            libc.madvise(start, end - start, _MADV_PAGEOUT)


class CaptureProgram:
    """The loaded BPF object: two tc programs, the ring buffer and the control maps."""

    def __init__(self, options: ProgramOptions) -> None:
        pages = options.ringbuf_pages
        if pages <= 0 or pages & (pages - 1):
            raise CaptureError(f"ring buffer pages must be a power of two, got {pages}")
        check_kernel()
        src = bpf_source_dir()
        try:
            from bcc import BPF  # imported here: only capture needs the OS package
        except ImportError as exc:
            raise CaptureError(
                "python3-bpfcc is not importable (install the OS package python3-bpfcc; "
                "the PyPI package named 'bcc' is unrelated)"
            ) from exc
        cflags = [f"-I{src}", f"-DHDRLOG_RINGBUF_PAGES={pages}"]
        with tempfile.TemporaryFile(mode="w+b") as err:
            try:
                with _fd2_to(err):
                    self._bpf = BPF(src_file=str(src / "capture.bpf.c").encode(), cflags=cflags)
                    self.ingress = self._bpf.load_func(b"hdrlog_ingress", BPF.SCHED_CLS)
                    self.egress = self._bpf.load_func(b"hdrlog_egress", BPF.SCHED_CLS)
            except Exception as exc:  # bcc raises bare Exception for compile/load failures
                err.seek(0)
                raise _classify_bcc_error(exc, err.read().decode(errors="replace")) from exc
        self._xdp: Any = None
        self._events = self._bpf[b"events"]
        self._counters = self._bpf[b"counters"]
        return_compiler_memory()

    def xdp(self) -> Any:
        """The XDP program, loaded on first use (only the XDP hook needs it)."""
        if self._xdp is None:
            from bcc import BPF

            try:
                self._xdp = self._bpf.load_func(b"hdrlog_xdp", BPF.XDP)
            except Exception as exc:  # bcc raises bare Exception
                raise CaptureError(f"the XDP program failed to load: {exc}") from exc
        return self._xdp

    @property
    def ringbuf_fd(self) -> int:
        return int(self._events.map_fd)

    @property
    def counters_fd(self) -> int:
        return int(self._counters.map_fd)

    @property
    def ringbuf_size(self) -> int:
        return int(self._events.max_entries)

    def counters(self) -> dict[str, int]:
        """Kernel counters summed over CPUs, by name (abi.KERNEL_COUNTERS)."""
        out: dict[str, int] = {}
        for i, name in enumerate(abi.KERNEL_COUNTERS):
            per_cpu = self._counters[ctypes.c_int(i)]
            out[name] = int(sum(per_cpu))
        return out

    @property
    def bpf(self) -> Any:
        """The bcc object, for capture/control.py's map updates."""
        return self._bpf

    def close(self) -> None:
        self._bpf.cleanup()


@contextlib.contextmanager
def _fd2_to(sink: IO[bytes]) -> Iterator[None]:
    """Send file descriptor 2 (where libbcc prints compiler and verifier logs) to ``sink``."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _classify_bcc_error(exc: Exception, stderr: str) -> Exception:
    text = f"{exc} {stderr}"
    if "Operation not permitted" in text or "Permission denied" in text and os.geteuid() != 0:
        return PrivilegeError("loading the BPF program was refused: needs CAP_BPF and CAP_PERFMON")
    if "/lib/modules" in text or "kernel headers" in text.lower() or "No such file" in text:
        return CaptureError(
            "BCC cannot compile the capture program: kernel headers missing "
            "(install linux-headers-$(uname -r))"
        )
    first = next((ln for ln in stderr.splitlines() if "error:" in ln), str(exc))
    return CaptureError(f"BPF program failed to compile or load: {first.strip()}")
