"""Versioned crosswalks (CSV, reviewed like code): read, checked, newest version chosen, new versions written.

Shipped crosswalks live in terminology/maps/; a site's own (including those `ehrlift mappings import`
writes) live in a folder beside the warehouse, `crosswalks/`, or in $EHRLIFT_CROSSWALKS. Every row carries
its version; for one source code the row with the highest version wins, so a new version is a new file
and history stays readable in the folder.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pipelines.common.errors import ConfigError

SHIPPED = Path(__file__).with_name("maps")
COLUMNS = (
    "source_system",
    "source_code",
    "source_display",
    "target_system",
    "target_code",
    "equivalence",
    "author",
    "reviewer",
    "review_date",
    "version",
)
EQUIVALENCES = frozenset(
    {"relatedto", "equivalent", "equal", "wider", "subsumes", "narrower", "specializes", "inexact"}
)


@dataclass(frozen=True)
class CrosswalkRow:
    file: Path
    line: int
    source_system: str
    source_code: str
    source_display: str
    target_system: str
    target_code: str
    equivalence: str
    author: str
    reviewer: str
    review_date: str
    version: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def user_dir(warehouse: Path | None) -> Path:
    """The site's crosswalk folder: $EHRLIFT_CROSSWALKS, else `crosswalks/` beside the warehouse."""
    if os.environ.get("EHRLIFT_CROSSWALKS"):
        return Path(os.environ["EHRLIFT_CROSSWALKS"])
    return (Path(warehouse).parent if warehouse else Path("ehrlift-data")) / "crosswalks"


def crosswalk_files(warehouse: Path | None) -> list[Path]:
    files = sorted(SHIPPED.glob("*.csv"))
    folder = user_dir(warehouse)
    if folder.is_dir():
        files += sorted(folder.glob("*.csv"))
    return files


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: '10' after '9', '2026-11-02' after '2026-1-30'."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[A-Za-z]+", version))


def read_crosswalk(path: Path) -> list[CrosswalkRow]:
    """Every row of one crosswalk file, checked; a bad row stops with its file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read crosswalk ({type(exc).__name__})") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != COLUMNS:
        raise ConfigError(f"{path}:1: crosswalk header must be exactly: {','.join(COLUMNS)}")
    rows = []
    for line, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(COLUMNS):
            raise ConfigError(f"{path}:{line}: expected {len(COLUMNS)} columns, found {len(values)}")
        row = CrosswalkRow(path, line, *(v.strip() for v in values))
        for name in ("source_system", "source_code", "target_system", "target_code", "version"):
            if not getattr(row, name):
                raise ConfigError(f"{path}:{line}: {name} is empty")
        if row.equivalence.lower() not in EQUIVALENCES:
            raise ConfigError(
                f"{path}:{line}: equivalence {row.equivalence!r} is not one of "
                + ", ".join(sorted(EQUIVALENCES))
            )
        if row.review_date:
            try:
                date.fromisoformat(row.review_date)
            except ValueError:
                raise ConfigError(f"{path}:{line}: review_date must be YYYY-MM-DD") from None
        rows.append(row)
    return rows


def effective(rows: list[CrosswalkRow]) -> list[CrosswalkRow]:
    """The newest version's row for each source code; two different answers at one version is an error."""
    best: dict[tuple[str, str], CrosswalkRow] = {}
    for row in rows:
        key = (row.source_system, row.source_code)
        held = best.get(key)
        if held is None or version_key(row.version) > version_key(held.version):
            best[key] = row
        elif version_key(row.version) == version_key(held.version) and (
            (row.target_system, row.target_code) != (held.target_system, held.target_code)
        ):
            raise ConfigError(
                f"{row.where}: maps the same source code as {held.where} at the same version "
                f"{row.version} to a different target",
                hint="give the newer decision a higher version",
            )
    return sorted(best.values(), key=lambda r: (r.source_system, r.source_code))


def load_crosswalks(warehouse: Path | None) -> list[CrosswalkRow]:
    rows: list[CrosswalkRow] = []
    for path in crosswalk_files(warehouse):
        rows += read_crosswalk(path)
    return effective(rows)


def write_crosswalk(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)  # a crash never leaves half a crosswalk where the next run would read it
    return path
