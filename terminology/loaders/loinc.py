"""LOINC release loader: Loinc.csv (or LoincTableCore.csv) and MapTo.csv beside it."""

from __future__ import annotations

import re
from pathlib import Path

from terminology.checks import loinc_check_ok
from terminology.loaders import Release, TerminologyLoadError, sha256_files
from terminology.loaders._files import find_one, read_csv

SYSTEM = "http://loinc.org"
# LOINC's STATUS values; only DEPRECATED takes a code out of use (DISCOURAGED and TRIAL stay usable).
STATUS = {"ACTIVE": "active", "TRIAL": "active", "DISCOURAGED": "active", "DEPRECATED": "inactive"}
PROPERTIES = (
    "COMPONENT",
    "PROPERTY",
    "TIME_ASPCT",
    "SYSTEM",
    "SCALE_TYP",
    "METHOD_TYP",
    "CLASS",
    "CLASSTYPE",
    "EXAMPLE_UCUM_UNITS",
    "EXAMPLE_UNITS",
    "ORDER_OBS",
)
DESIGNATIONS = (("SHORTNAME", "short"), ("DisplayName", "display"), ("CONSUMER_NAME", "consumer"))
_VERSION_IN_PATH = re.compile(r"Loinc_?(\d+\.\d+)", re.IGNORECASE)


def read(path: Path) -> Release:
    table = find_one(path, ("Loinc.csv", "LoincTableCore.csv"), "LOINC table") if path.is_dir() else path
    assert table is not None
    mapto = table.parent / "MapTo.csv"
    files = [table] + ([mapto] if mapto.is_file() else [])
    release = Release(
        kind="loinc", system=SYSTEM, version="", source=str(table.resolve()), sha256=sha256_files(files)
    )
    versions: set[str] = set()
    seen: set[str] = set()
    for line, row in read_csv(table, ("LOINC_NUM", "STATUS", "LONG_COMMON_NAME")):
        code = row["LOINC_NUM"].strip()
        if not loinc_check_ok(code):
            raise TerminologyLoadError(table, line, f"LOINC_NUM {code!r} is not a valid LOINC code")
        if code in seen:
            raise TerminologyLoadError(table, line, f"LOINC_NUM {code} appears twice")
        seen.add(code)
        word = row["STATUS"].strip().upper()
        if word not in STATUS:
            raise TerminologyLoadError(table, line, f"unknown STATUS {row['STATUS']!r}")
        release.concepts.append((code, row["LONG_COMMON_NAME"] or None, STATUS[word], word))
        for column in PROPERTIES:
            value = (row.get(column) or "").strip()
            if value:
                release.properties.append((code, column, value))
        for column, use in DESIGNATIONS:
            value = (row.get(column) or "").strip()
            if value:
                release.designations.append((code, value, use))
        related = {t.strip() for t in (row.get("RELATEDNAMES2") or "").split(";")}
        release.designations.extend((code, t, "related") for t in sorted(related) if t)
        if row.get("VersionLastChanged"):
            versions.add(row["VersionLastChanged"].strip())
    if not seen:
        raise TerminologyLoadError(table, None, "no LOINC codes in the file")
    if mapto.is_file():
        for line, row in read_csv(mapto, ("LOINC", "MAP_TO")):
            src, dst = row["LOINC"].strip(), row["MAP_TO"].strip()
            if not (loinc_check_ok(src) and loinc_check_ok(dst)):
                raise TerminologyLoadError(mapto, line, "LOINC or MAP_TO is not a valid LOINC code")
            release.replacements.append((src, dst, "MAP_TO"))
    m = _VERSION_IN_PATH.search(str(table.resolve()))
    # The release's number is in its folder name; else the newest VersionLastChanged is that number.
    release.version = m.group(1) if m else max(versions, key=_version_key, default="unknown")
    return release


def _version_key(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.]", v))
