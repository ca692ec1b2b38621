"""RFC 3339 UTC timestamps with milliseconds, as the protocol writes them."""

from __future__ import annotations

from datetime import UTC, datetime

from werkbank_protocol.errors import ProtocolError

# Accept any RFC 3339 time (seconds or fractions, Z or an offset); always write UTC with ms.
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
    try:
        # fromisoformat in 3.11 takes "Z" but at most 6 fraction digits.
        head, _, frac_zone = text.partition(".")
        if frac_zone:
            digits = "".join(c for c in frac_zone if c.isdigit())
            zone = frac_zone[len(digits):]
            text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ProtocolError("bad_time", f"{text!r} is not an RFC 3339 time") from exc
    if value.tzinfo is None:
        raise ProtocolError("bad_time", f"{text!r} has no time zone; send UTC with a trailing Z")
    return value.astimezone(UTC)
