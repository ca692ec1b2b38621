"""RFC 3339 UTC timestamps with milliseconds, as the protocol writes them."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from werkbank_protocol.errors import ProtocolError

# Accept any RFC 3339 time (seconds or fractions, Z or an offset); always write UTC with ms.
_FRACTION = re.compile(r"T\d{2}:\d{2}:\d{2}\.(\d+)")
TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"


def format_ts(when: datetime) -> str:
    """``2026-11-22T08:15:03.120Z`` for an aware datetime (naive ones are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def now_ts() -> str:
    return format_ts(datetime.now(UTC))


def parse_ts(text: str) -> datetime:
    """An aware UTC datetime from a protocol timestamp; ProtocolError when it is not one."""
    # fromisoformat in 3.11 takes "Z" but only 3 or 6 fraction digits: pad or cut to 6.
    match = _FRACTION.search(text)
    iso = text
    if match:
        iso = f"{text[: match.start(1)]}{match.group(1)[:6].ljust(6, '0')}{text[match.end(1) :]}"
    try:
        value = datetime.fromisoformat(iso)
    except ValueError as exc:
        raise ProtocolError("bad_time", f"{text!r} is not an RFC 3339 time") from exc
    if value.tzinfo is None:
        raise ProtocolError("bad_time", f"{text!r} has no time zone; send UTC with a trailing Z")
    return value.astimezone(UTC)
