"""UTC timestamps as written in job state files, manifests and the history (ISO 8601, ``Z``).

Python 3.10's ``datetime.fromisoformat`` does not accept a trailing ``Z``, and the charm runs on
Ubuntu 22.04 (Python 3.10), so every reader goes through :func:`parse_utc`.
"""

from __future__ import annotations

import datetime


def utc_now() -> datetime.datetime:
    """The current time, timezone-aware UTC, whole seconds."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def format_utc(moment: datetime.datetime) -> str:
    """``2026-11-27T07:05:13Z`` (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    moment = moment.astimezone(datetime.timezone.utc).replace(microsecond=0)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> datetime.datetime:
    """Parse an ISO 8601 timestamp (``Z`` or an offset; naive means UTC) into aware UTC.

    Raises:
        ValueError: ``text`` is not an ISO 8601 timestamp.
    """
    cleaned = text.strip()
    if cleaned.endswith(("Z", "z")):
        cleaned = cleaned[:-1] + "+00:00"
    moment = datetime.datetime.fromisoformat(cleaned)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def parse_utc_or_none(text: str | None) -> datetime.datetime | None:
    """Like :func:`parse_utc`, but None for None, empty or unparsable text."""
    if not text:
        return None
    try:
        return parse_utc(text)
    except ValueError:
        return None


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from ``start`` to ``end`` (timestamps), or None when either is missing."""
    first, last = parse_utc_or_none(start), parse_utc_or_none(end)
    if first is None or last is None:
        return None
    return max(0.0, (last - first).total_seconds())


def format_duration(seconds: float | None) -> str:
    """A short human duration: ``45s``, ``7m``, ``1h12m``, ``2d3h``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"
