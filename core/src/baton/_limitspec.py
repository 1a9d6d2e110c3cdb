"""What limits are declared as: rates such as ``"10/s"`` and slots by name, checked
where they are written (flow options, settings)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from baton._errors import BatonError

__all__ = ["LimitError", "check_concurrency_limits", "check_rate_limits", "parse_rate"]


class LimitError(BatonError, ValueError):
    """A concurrency or rate limit used in a way that cannot work: a name no limit of
    the flow run has, a malformed rate, or more slots than the limit has."""


# -- declarations ---------------------------------------------------------------------

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*$", re.IGNORECASE)
_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}


def parse_rate(text: object) -> tuple[int, float]:
    """``"10/s"`` -> (10, 1.0): at most 10 calls in any 1 second. Units: s, m, h, d
    (or second, minute, hour, day); a period may have a count, as in ``"5/10s"``."""
    match = _RATE.match(text) if isinstance(text, str) else None
    unit = _UNITS.get(match.group(3).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"a rate is written as calls per period, such as '10/s', '600/m', '1/h' or "
            f"'5/10s' (units: s, m, h, d); got {text!r}"
        )
    count = int(match.group(1))
    scale = float(match.group(2)) if match.group(2) not in ("", ".") else 1.0
    period = scale * unit
    if count < 1 or not period > 0 or not math.isfinite(period):
        raise ValueError(f"a rate needs at least 1 call per period longer than 0, got {text!r}")
    return count, period


def check_concurrency_limits(value: Any) -> dict[str, int]:
    """Validate ``{"db": 2}``: names are non-empty strings, limits whole numbers >= 1."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of limit names to slots, such as {'db': 2}")
    checked: dict[str, int] = {}
    for name, limit in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"limit names are non-empty strings (tags), got {name!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(
                f"the limit of {name!r} must be a whole number of slots >= 1, got {limit!r}; "
                "leave the name out for no limit"
            )
        checked[name] = limit
    return checked


def check_rate_limits(value: Any) -> dict[str, str]:
    """Validate ``{"api": "10/s"}`` (see `parse_rate`)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of limit names to rates, such as {'api': '10/s'}")
    checked: dict[str, str] = {}
    for name, rate in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"limit names are non-empty strings, got {name!r}")
        try:
            parse_rate(rate)
        except ValueError as exc:
            raise ValueError(f"rate limit {name!r}: {exc}") from None
        checked[name] = rate
    return checked


# -- the limiter ----------------------------------------------------------------------
