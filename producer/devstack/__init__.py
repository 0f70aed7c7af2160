"""The local Kafka + schema registry used by ``hdrlog stack``, ``make run`` and the tests."""

from producer.devstack.stack import LocalStack, StackSettings, StackStatus, run_stack_command

__all__ = ["LocalStack", "StackSettings", "StackStatus", "run_stack_command"]
