"""The local Kafka + schema registry used by ``hdrlog stack``, ``make run`` and the tests.

``stack`` is the entry point; ``fetch`` (Maven), ``kafka``, ``registry``,
``jvm`` and ``procs`` (detached processes, port owners) are its parts.
"""

from __future__ import annotations

from producer.devstack.stack import ComponentStatus, LocalStack, StackSettings, StackStatus, run_stack_command

__all__ = ["ComponentStatus", "LocalStack", "StackSettings", "StackStatus", "run_stack_command"]
