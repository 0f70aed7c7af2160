"""The benchmark's CPU meter: a cpuacct cgroup charges everything a contender runs.

A process started into a ``CpuGroup`` burns a known amount of CPU in a
thread and in a child process of its own; what it reports from the kernel's
own accounting of itself and its waited-for child (``getrusage``: self and
children, every thread) is the oracle the group's usage must match.  A process
moved in while running (``add``) is charged from then on.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from producer.bench.cgroup import CpuGroup

pytestmark = pytest.mark.kernel

BURN_S = 0.4  # CPU seconds each of the thread and the child burns

_BURNER = textwrap.dedent("""
    import os, resource, subprocess, sys, threading, time

    def burn(seconds, clock):
        end = clock() + seconds
        while clock() < end:
            pass

    t = threading.Thread(target=burn, args=(float(sys.argv[1]), time.thread_time))
    t.start()
    subprocess.run([sys.executable, "-c",
                    f"import time\\nend = time.process_time() + {sys.argv[1]}\\nwhile time.process_time() < end: pass"],
                   check=True)
    t.join()
    used = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        used += r.ru_utime + r.ru_stime
    print(used, flush=True)
    sys.stdin.read()  # stays in the group until told to go
""")


def test_a_thread_and_a_child_process_are_both_charged() -> None:
    with CpuGroup("test") as group:
        proc = subprocess.Popen([sys.executable, "-c", _BURNER, str(BURN_S)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, preexec_fn=group.preexec_fn())
        assert proc.stdout is not None and proc.stdin is not None
        used = float(proc.stdout.readline())  # the burner's own account, child included
        charged = group.usage_s()
        assert proc.pid in group.pids()
        proc.communicate(timeout=30)
    assert used >= 2 * BURN_S
    # rusage and cpuacct count the same runtime (rusage rounded to its ticks' split of user and system)
    assert abs(charged - used) <= 0.05, (used, charged)


def test_a_process_moved_in_is_charged_from_then_on() -> None:
    burner = subprocess.Popen([sys.executable, "-c", _BURNER, str(BURN_S)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert burner.stdout is not None and burner.stdin is not None
    used = float(burner.stdout.readline())  # all of its burning done before it is moved
    with CpuGroup("test") as group:
        group.add(burner.pid)
        assert group.pids() == [burner.pid]
        before = group.usage_s()
        burner.communicate(timeout=30)
        after = group.usage_s()
    assert used >= 2 * BURN_S
    assert before < 0.05 and after < 0.05, (before, after)  # none of what ran before the move
