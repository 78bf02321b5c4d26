"""UTC timestamp helpers (Python 3.10 cannot parse a trailing Z by itself)."""

from __future__ import annotations

import datetime

import pytest

from openeuler_image_builder.core.timestamps import (
    format_duration,
    format_utc,
    parse_utc,
    parse_utc_or_none,
    seconds_between,
)

UTC = datetime.timezone.utc


def test_parse_z_offset_and_naive() -> None:
    expected = datetime.datetime(2026, 11, 27, 7, 5, 13, tzinfo=UTC)
    assert parse_utc("2026-11-27T07:05:13Z") == expected
    assert parse_utc("2026-11-27T08:05:13+01:00") == expected
    assert parse_utc("2026-11-27T07:05:13") == expected
    assert format_utc(expected) == "2026-11-27T07:05:13Z"
    assert format_utc(datetime.datetime(2026, 11, 27, 7, 5, 13, 999)) == "2026-11-27T07:05:13Z"


def test_bad_or_missing_timestamps() -> None:
    with pytest.raises(ValueError):
        parse_utc("yesterday")
    assert parse_utc_or_none("yesterday") is None
    assert parse_utc_or_none(None) is None
    assert seconds_between("2026-11-27T07:00:00Z", None) is None
    assert seconds_between("2026-11-27T07:00:00Z", "2026-11-27T07:20:00Z") == 1200.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "?"),
        (-3, "0s"),
        (45, "45s"),
        (420, "7m"),
        (3600, "1h"),
        (4320, "1h12m"),
        (3900, "1h05m"),
        (86400, "1d"),
        (97200, "1d3h"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text
