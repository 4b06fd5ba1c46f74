"""Site settings (schemas/site.json): the time zone HL7 v2 times without a UTC offset are read in."""

from __future__ import annotations

import os
from datetime import datetime
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from pipelines.common.errors import ConfigError
from pipelines.common.paths import shipped


@cache
def _settings() -> dict[str, dict]:
    return orjson.loads((shipped("schemas") / "site.json").read_bytes())["settings"]


def time_zone_name() -> str:
    entry = _settings()["time_zone"]
    return os.environ.get(entry["environment"]) or entry["value"]


@cache
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"site time zone {name!r} is not an IANA time zone",
            hint="set EHRLIFT_SITE_TIME_ZONE, e.g. America/Chicago",
        ) from None


def offset(name: str, year: int, month: int, day: int, hour: int, minute: int, second: int) -> str:
    """The zone's UTC offset at that local time as "+HH:MM" (an ambiguous hour takes its first reading)."""
    delta = datetime(year, month, day, hour, minute, second, tzinfo=_zone(name)).utcoffset()
    assert delta is not None
    minutes = int(delta.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
