"""The mapping review round trip: unmapped codes out as a review file, approved rows in as a crosswalk.

`ehrlift mappings suggest` writes one row per candidate (CSV, or XLSX by extension), most frequent codes
first; a reviewer marks a row `approve` (and may correct its target) and signs it; `ehrlift mappings import`
checks the file and writes the approved rows as a new crosswalk version in the site's crosswalk folder,
which the next run applies (method suggestion-approved) to old and new resources alike.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from pipelines.common.errors import ConfigError, InputNotFoundError
from pipelines.normalize import build_normalizer
from terminology import cooccur, core
from terminology.crosswalks import effective, read_crosswalk, user_dir, write_crosswalk
from terminology.normalize import SUGGESTION_AUTHOR
from terminology.scan import codings, scan
from terminology.suggest import Index, Target, target_systems
from terminology.terms import WarehouseTerminology

COLUMNS = (
    "source_system",
    "source_code",
    "source_display",
    "occurrences",
    "rank",
    "target_system",
    "target_code",
    "target_display",
    "score",
)
REVIEW_COLUMNS = ("decision", "reviewer", "review_date")
# Read when present, never required: files written before these columns existed still import.
INFO_COLUMNS = ("basis", "note")
DECISIONS = ("approve", "reject")  # the workbook's dropdown; any of APPROVED also approves
APPROVED = frozenset({"approve", "approved", "yes", "y", "x", "accept", "accepted"})
SUGGESTABLE = frozenset({"local_code_not_mapped", "unknown_system"})


def unmapped_targets(con: duckdb.DuckDBPyConnection, warehouse: Path | None) -> list[Target]:
    """Unmapped local codes of the whole warehouse with occurrences, units and value types seen."""
    normalizer, _ = build_normalizer(con, warehouse, sync=False)
    units: dict[tuple[Any, Any], Counter[str]] = {}
    value_types: dict[tuple[Any, Any], Counter[str]] = {}
    beside: dict[tuple[str, str], Counter[tuple[str, str, str]]] = {}

    def context(table: str, resource: dict[str, Any], _source: str) -> None:
        cooccur.collect(resource, beside)
        if table != "Observation":
            return
        vtype = next((k[5:] for k in resource if k.startswith("value") and k != "value"), None)
        q = resource.get("valueQuantity")
        unit = q.get("unit") or q.get("code") if isinstance(q, dict) else None
        for c in codings(resource.get("code")):
            key = (c.get("system"), c.get("code"))
            value_types.setdefault(key, Counter())
            if vtype:
                value_types[key][vtype] += 1
            if isinstance(unit, str):
                units.setdefault(key, Counter())[unit] += 1

    scan(con, normalizer, context)
    by_code: dict[tuple[str, str, str | None], Target] = {}
    for (did, _src), n in normalizer.counts.items():
        d = normalizer.decisions[did]
        if d.kind != "coding" or d.method != "unmapped" or d.reason not in SUGGESTABLE:
            continue
        key = (d.source_system or "", d.source_code or "", d.source_display)
        t = by_code.setdefault(key, Target(*key))
        t.occurrences += n
        ctx = (d.source_system, d.source_code)
        t.units = units.get(ctx, Counter())
        t.value_types = value_types.get(ctx, Counter())
        t.observation = ctx in value_types
        t.beside = beside.get(ctx, Counter())
    return sorted(by_code.values(), key=lambda t: (-t.occurrences, t.source_system, t.source_code))


def suggest(con: duckdb.DuckDBPyConnection, warehouse: Path | None, top: int = 5) -> list[dict[str, Any]]:
    """Review rows: each unmapped code with its top candidates (one row saying why, when there are none).

    Standard codes sent beside the local code come first (basis `sent beside`), then text matches.
    """
    indexes: dict[tuple[str, ...], Index] = {}
    terms = WarehouseTerminology(con)
    rows: list[dict[str, Any]] = []
    for t in unmapped_targets(con, warehouse):
        systems = target_systems(t)
        if systems not in indexes:
            indexes[systems] = Index.from_warehouse(con, systems)
        base = {
            "source_system": t.source_system,
            "source_code": t.source_code,
            "source_display": t.source_display or "",
            "occurrences": t.occurrences,
        }
        found: list[dict[str, Any]] = []
        for (system, code, display), n in t.beside.most_common():
            share = min(n / t.occurrences, 1.0) if t.occurrences else 1.0
            found.append(
                {
                    "target_system": system,
                    "target_code": code,
                    "target_display": display,
                    "score": round(share, 3),
                    "basis": f"sent beside it in {n} of {t.occurrences} occurrences",
                    "note": "",
                }
            )
        seen = {(f["target_system"], f["target_code"]) for f in found}
        for c in indexes[systems].rank(t, top):
            if (c.system, c.code) not in seen and len(found) < max(top, len(seen)):
                found.append(
                    {
                        "target_system": c.system,
                        "target_code": c.code,
                        "target_display": c.display,
                        "score": c.score,
                        "basis": "display text" + (", units" if t.units else ""),
                        "note": _fragment_note(terms, c.system),
                    }
                )
        if not found:
            rows.append(
                {
                    **base,
                    "rank": "",
                    "target_system": "",
                    "target_code": "",
                    "target_display": "",
                    "score": "",
                    "basis": "",
                    "note": why_none(t, systems, indexes[systems], terms),
                }
            )
        for rank, f in enumerate(found, start=1):
            rows.append({**base, "rank": rank, **f})
    return rows


def _fragment_note(terms: WarehouseTerminology, system: str) -> str:
    if terms.is_subset(system):
        return f"from a fragment of {system} only: a fuller release may hold a better match"
    return ""


def why_none(t: Target, systems: tuple[str, ...], index: Index, terms: WarehouseTerminology) -> str:
    """Why a code has no candidate, and what would give it one."""
    names = ", ".join(systems)
    load = "load the full release (`ehrlift terminology load loinc|snomed PATH`) and suggest again"
    if not (t.source_display or "").strip():
        return f"no display text to match and no standard code sent beside it: map it by hand to {names}"
    if not index.texts:
        return f"no concept of {names} is loaded: {load}"
    fragments = [s for s in systems if terms.is_subset(s)]
    if fragments:
        return (
            f"no match among the {len(index.texts)} concepts of the loaded fragment of "
            f"{', '.join(fragments)} (the shipped default): {load}; or type a well-formed code by hand "
            "(accepted, flagged unverified)"
        )
    return f"no concept of the loaded {names} matches the display closely enough: map it by hand"


# Column widths in characters for the workbook: URIs and displays wide, numbers narrow.
_WIDTHS = {"source_system": 34, "source_display": 30, "target_system": 24, "target_display": 36,
           "basis": 30, "note": 60, "source_code": 14, "target_code": 12, "reviewer": 16,
           "review_date": 12, "decision": 11}  # fmt: skip


def write_review(path: Path, rows: list[dict[str, Any]]) -> Path:
    header = COLUMNS + INFO_COLUMNS + REVIEW_COLUMNS
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".xlsx":
        _write_workbook(path, header, rows)
        return path
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_workbook(path: Path, header: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """A sheet a reviewer can work in: sized columns, a filter on every column, a decision dropdown."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    wb = Workbook()
    ws = wb.active
    ws.title = "mappings"
    ws.append(list(header))
    for row in rows:
        ws.append([row.get(c, "") for c in header])
    for i, name in enumerate(header, start=1):
        ws.column_dimensions[get_column_letter(i)].width = _WIDTHS.get(name, max(len(name) + 2, 9))
        ws.cell(row=1, column=i).font = Font(bold=True)
    last = get_column_letter(len(header))
    ws.auto_filter.ref = f"A1:{last}{max(len(rows) + 1, 2)}"
    ws.freeze_panes = "E2"  # the source code stays in view while scrolling right
    col = get_column_letter(header.index("decision") + 1)
    dropdown = DataValidation(
        type="list",
        formula1='"' + ",".join(DECISIONS) + '"',
        allow_blank=True,
        showErrorMessage=True,
        errorTitle="decision",
        error="choose approve or reject (or leave blank)",
    )
    dropdown.add(f"{col}2:{col}{max(len(rows) + 1, 2) + 500}")  # room for rows a reviewer adds
    ws.add_data_validation(dropdown)
    wb.save(path)


def read_review(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, row) pairs; the line is the spreadsheet row or CSV line a reviewer sees."""
    if not path.is_file():
        raise InputNotFoundError(f"review file not found: {path}")
    if path.suffix.lower() == ".xlsx":
        from openpyxl import load_workbook

        ws = load_workbook(path, read_only=True, data_only=True).worksheets[0]
        values = [["" if v is None else str(v) for v in row] for row in ws.iter_rows(values_only=True)]
    else:
        with path.open(encoding="utf-8-sig", newline="") as f:
            values = list(csv.reader(f))
    if not values:
        raise ConfigError(f"{path}:1: the review file is empty")
    header = [h.strip() for h in values[0]]
    missing = [c for c in (*COLUMNS, *REVIEW_COLUMNS) if c not in header]
    if missing:
        raise ConfigError(f"{path}:1: missing columns: {', '.join(missing)}")
    return [
        (n, {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)})
        for n, row in enumerate(values[1:], start=2)
        if any(v.strip() for v in row)
    ]


@dataclass
class ImportResult:
    path: Path | None
    approved: int
    warnings: list[str]


def import_review(con: duckdb.DuckDBPyConnection, path: Path, warehouse: Path | None) -> ImportResult:
    """Approved rows -> a new crosswalk version; every problem names the file and line."""
    terms = WarehouseTerminology(con)
    reg = core.registry()
    out: list[dict[str, str]] = []
    seen: dict[tuple[str, str], int] = {}
    warnings: list[str] = []
    errors: list[str] = []
    for line, row in read_review(path):
        if row["decision"].lower() not in APPROVED:
            continue
        where = f"{path}:{line}"
        key = (row["source_system"], row["source_code"])
        if not all(key):
            errors.append(f"{where}: source_system and source_code are required")
            continue
        if key in seen:
            errors.append(f"{where}: a second approved target for the code approved at line {seen[key]}")
            continue
        seen[key] = line
        if not row["reviewer"]:
            errors.append(f"{where}: approved without a reviewer")
        review_date = row["review_date"][:10] or date.today().isoformat()
        try:
            date.fromisoformat(review_date)
        except ValueError:
            errors.append(f"{where}: review_date must be YYYY-MM-DD")
        system = reg.canonical(row["target_system"]) if row["target_system"] else None
        if not system or not row["target_code"]:
            errors.append(f"{where}: target_system must be a known standard system and target_code given")
            continue
        malformed = core.malformed_reason(system, row["target_code"])
        if malformed:
            errors.append(f"{where}: target_code is malformed ({malformed})")
        elif terms.loaded(system) is None:
            warnings.append(f"{where}: no release of {system} is loaded: the target code was not checked")
        else:
            concept = terms.concept(system, row["target_code"])
            if concept is None and terms.is_subset(system):
                # Well-formed and check-digit-valid, but only a fragment of the system is loaded.
                warnings.append(
                    f"{where}: target_code is well formed but not in the loaded fragment of {system}: "
                    "accepted as unverified (listed in the compliance report); load the full release "
                    "to check it"
                )
            elif concept is None:
                errors.append(f"{where}: target_code is not in the loaded {system} release")
            elif concept[1] != "active":
                errors.append(f"{where}: target_code is inactive in the loaded {system} release")
        out.append(
            {
                "source_system": row["source_system"],
                "source_code": row["source_code"],
                "source_display": row["source_display"],
                "target_system": system,
                "target_code": row["target_code"],
                "equivalence": "equivalent",
                # A row still carrying its score is the suggestion as offered; one without was typed by hand.
                "author": SUGGESTION_AUTHOR if row["score"] else row["reviewer"],
                "reviewer": row["reviewer"],
                "review_date": review_date,
                "version": "",
            }
        )
    if errors:
        raise ConfigError(f"{len(errors)} problem(s) in the review file:\n" + "\n".join(errors))
    if not out:
        return ImportResult(None, 0, warnings)
    folder = user_dir(warehouse)
    version = _next_version(folder)
    for r in out:
        r["version"] = version
    target = write_crosswalk(folder / f"reviewed-{version}.csv", out)
    effective(read_crosswalk(target))  # what the next run will read must read back cleanly
    return ImportResult(target, len(out), warnings)


def _next_version(folder: Path) -> str:
    today = date.today().isoformat()
    taken = [p.stem.removeprefix("reviewed-") for p in folder.glob("reviewed-*.csv")]
    n = 1 + max((int(v.rsplit(".", 1)[1]) for v in taken if v.startswith(today + ".")), default=0)
    return f"{today}.{n}"
