"""The one timestamp format: UTC ISO 8601 with milliseconds and `Z`."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def iso_from_ms(ms: int) -> str:
    seconds, millis = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def now_iso() -> str:
    return iso_from_ms(int(time.time() * 1000))


def parse_iso(value: object) -> str | None:
    """Normalise an ISO 8601 timestamp to the wire format; None if it is not one."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    return _parse_iso(value)


@functools.lru_cache(maxsize=4096)
def _parse_iso(value: str) -> str | None:
    """Cached: ingest checks each timestamp, then normalises it (two calls, one parse),
    and a batch's events share timestamps. Bounded: at most 4,096 short strings."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        ms = (parsed - _EPOCH) // _MS
    except OverflowError:
        return None
    if not 0 <= ms < 253402300800000:
        return None
    return iso_from_ms(ms)
