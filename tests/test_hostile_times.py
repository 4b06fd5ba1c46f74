"""HL7 v2 times without a UTC offset take the site's time zone (v2-to-FHIR IG), so they are valid FHIR."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from pipelines.common.errors import ConfigError
from pipelines.convert.hl7v2.datatypes import dtm

FHIR_DATETIME = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2}))?)?)?")


@pytest.mark.parametrize(
    ("zone", "value", "expected"),
    [
        ("UTC", "20240315123045", "2024-03-15T12:30:45+00:00"),
        ("America/New_York", "20240115123045", "2024-01-15T12:30:45-05:00"),
        ("America/New_York", "20240715123045", "2024-07-15T12:30:45-04:00"),  # daylight saving time
        ("Asia/Kolkata", "202407151230", "2024-07-15T12:30:00+05:30"),
        ("America/New_York", "20240715123045+0100", "2024-07-15T12:30:45+01:00"),  # its own offset wins
        ("America/New_York", "20240715", "2024-07-15"),  # a date has no zone
    ],
)
def test_a_time_without_offset_takes_the_site_zone(zone, value, expected, monkeypatch):
    monkeypatch.setenv("EHRLIFT_SITE_TIME_ZONE", zone)
    lost = Counter()
    out = dtm(_Ctx(lost), value, "OBX-14")
    assert out == expected
    assert FHIR_DATETIME.fullmatch(out)
    assert not lost


def test_an_unknown_zone_is_a_config_error(monkeypatch):
    monkeypatch.setenv("EHRLIFT_SITE_TIME_ZONE", "Mars/Olympus_Mons")
    with pytest.raises(ConfigError, match="not an IANA time zone"):
        dtm(_Ctx(Counter()), "20240315123045", "OBR-7")


class _Ctx:
    """What dtm() needs of a converter context: the counter of values it could not read."""

    def __init__(self, lost: Counter) -> None:
        self.lost = lost
