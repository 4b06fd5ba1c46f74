"""Clerical review: pairs between thresholds out to CSV/XLSX (what a reviewer needs), decisions back in."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from pipelines.common.errors import ConfigError, InputNotFoundError

SIDE = ("source", "name", "birth_date", "sex", "postcode")
COLUMNS = (
    "left_patient_id",
    "right_patient_id",
    "score",
    "reason",
    *(f"left_{c}" for c in SIDE),
    *(f"right_{c}" for c in SIDE),
    "decision",
    "reviewer",
)
DECISIONS = ("link", "no_link")
_SIDE_SQL = """
    SELECT p.id, coalesce(f.format, 'unknown') || ' / ' || p.source_system AS source,
        trim(coalesce(array_to_string(CAST(p.resource -> '$.name[0].given' AS VARCHAR[]), ' '), '') || ' '
            || coalesce(p.resource ->> '$.name[0].family', '')) AS name,
        p.resource ->> '$.birthDate' AS birth_date, p.resource ->> '$.gender' AS sex,
        p.resource ->> '$.address[0].postalCode' AS postcode
    FROM fhir."Patient" p LEFT JOIN ops.files f USING (file_sha256)
"""


def review_rows(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Every pair awaiting review, strongest first; no street, phone or record number leaves the warehouse."""
    return con.execute(
        f"""
        WITH side AS ({_SIDE_SQL})
        SELECT k.left_patient_id, k.right_patient_id, round(k.score, 4),
            coalesce(k.rule, 'between thresholds'),
            l.source, l.name, l.birth_date, l.sex, l.postcode,
            r.source, r.name, r.birth_date, r.sex, r.postcode, '', ''
        FROM ops.identity_links k
        JOIN side l ON l.id = k.left_patient_id JOIN side r ON r.id = k.right_patient_id
        WHERE k.decision = 'review'
        ORDER BY k.score DESC NULLS LAST, k.left_patient_id, k.right_patient_id
        """
    ).fetchall()


def export_review(con: duckdb.DuckDBPyConnection, out: Path) -> int:
    """Write the review file (.xlsx or .csv by its suffix); returns the number of pairs."""
    from pipelines.deid.audit import record_access

    rows = review_rows(con)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".xlsx":
        from openpyxl import Workbook

        book = Workbook()
        sheet = book.active
        sheet.title = "review"
        sheet.append(COLUMNS)
        for row in rows:
            sheet.append(list(row))
        book.save(out)
    else:
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            writer.writerows(rows)
    record_access(con, "identity review", "read", {"fhir.Patient": 2 * len(rows)}, None, "review file")
    return len(rows)


@dataclass(slots=True)
class ImportResult:
    accepted: int = 0
    undecided: int = 0
    rejected: list[int] = field(default_factory=list)  # row numbers in the file (2 = first data row)


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise InputNotFoundError("the review file does not exist or is not a file")
    if path.suffix.lower() == ".xlsx":
        from openpyxl import load_workbook

        sheet = load_workbook(path, read_only=True).active
        values = [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)]
        if not values:
            return []
        head = values[0]
        return [dict(zip(head, row, strict=False)) for row in values[1:]]
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


def import_decisions(con: duckdb.DuckDBPyConnection, path: Path, reviewer: str | None = None) -> ImportResult:
    """Record the file's decisions (durable; re-importing the same file replaces its own rows)."""
    rows = _read(path)
    if rows and not {"left_patient_id", "right_patient_id", "decision"} <= rows[0].keys():
        raise ConfigError("the review file needs left_patient_id, right_patient_id and decision columns")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    known = {r[0] for r in con.execute('SELECT id FROM fhir."Patient"').fetchall()} if rows else set()
    result = ImportResult()
    good: list[tuple[str, str, str, str, str]] = []
    for number, row in enumerate(rows, start=2):
        decision = (row.get("decision") or "").strip().lower().replace("-", "_").replace(" ", "_")
        if not decision:
            result.undecided += 1
            continue
        a, b = (row.get("left_patient_id") or "").strip(), (row.get("right_patient_id") or "").strip()
        who = (row.get("reviewer") or "").strip() or (reviewer or "")
        if decision not in DECISIONS or a not in known or b not in known or a == b or not who:
            result.rejected.append(number)
            continue
        good.append((min(a, b), max(a, b), decision, who, digest))
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM ops.identity_decisions WHERE imported_from = ?", [digest])
        if good:
            con.executemany("INSERT INTO ops.identity_decisions VALUES (?, ?, ?, ?, now(), ?)", good)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    result.accepted = len(good)
    return result
