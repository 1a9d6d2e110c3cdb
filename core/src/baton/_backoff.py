"""Retry delays that grow: a helper for `retry_delay_seconds`."""

from __future__ import annotations

from collections.abc import Callable

from baton._errors import InvalidOptionsError

__all__ = ["exponential_backoff"]


def exponential_backoff(backoff_factor: float) -> Callable[[int], list[float]]:
    """Retry delays that double each time: `backoff_factor * 2 ** n` for retry n (from 0).

    >>> exponential_backoff(10)(4)
    [10.0, 20.0, 40.0, 80.0]

    Use it as `@task(retries=4, retry_delay_seconds=exponential_backoff(10))`.
    """
    if not isinstance(backoff_factor, (int, float)) or backoff_factor < 0:
        raise InvalidOptionsError(
            f"exponential_backoff: backoff_factor must be a number >= 0, got {backoff_factor!r}"
        )

    def delays(retries: int) -> list[float]:
        return [float(backoff_factor * 2**n) for n in range(retries)]

    return delays
