"""The one retry policy: exponential backoff with jitter, for retriable errors only.

Callers raise HdrlogError subclasses with ``retriable`` set where the error
entered the program; this module reads that flag and never guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from producer.errors import HdrlogError

T = TypeVar("T")


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, HdrlogError) and exc.retriable


def with_retry(
    call: Callable[[], T],
    *,
    deadline_s: float,
    initial_s: float = 0.2,
    max_s: float = 5.0,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run ``call``; retry retriable errors until ``deadline_s``, then re-raise the last."""

    def before_sleep(state: object) -> None:
        if on_retry is not None:
            outcome = state.outcome  # type: ignore[attr-defined]
            on_retry(outcome.exception(), state.next_action.sleep)  # type: ignore[attr-defined]

    retrying = Retrying(
        retry=retry_if_exception(_is_retriable),
        stop=stop_after_delay(deadline_s),
        # exponential from initial_s up to max_s, plus up to 1 s of jitter (tenacity's
        # wait_exponential_jitter renamed its arguments between releases; these two have not)
        wait=wait_exponential(multiplier=initial_s, max=max_s) + wait_random(0, 1),
        reraise=True,
        before_sleep=before_sleep,
    )
    return retrying(call)
