"""Quarantined FHIR lines that produced nothing, attributed to their patient through the landed copy.

A quarantined unit that also produced records is attributed through those records (snapshot.py). A
quarantined NDJSON line, such as a conflicting duplicate or a resource whose release upgrade failed,
produced nothing, yet names its patient in its own subject or patient reference. The landing zone keeps
each input byte for byte and the pointer gives the line's offset and length, so the snapshot reads just
those bytes. A line that cannot be read (landing zone elsewhere, file pruned, not JSON) stays unattributed.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import duckdb

from pipelines.common.warehouse import RESOURCE_TYPE

log = logging.getLogger(__name__)

_POINTER = re.compile(r"#ndjson_line=\d+@(\d+)\+(\d+)$")
_PATIENT = re.compile(r"^(?:.*/)?Patient/([A-Za-z0-9\-.]{1,64})$")
LIMIT = 10_000  # lines read per snapshot: a bound on a refresh's time, reported when reached
_MAX_LINE = 1 << 20


def attribute(con: duckdb.DuckDBPyConnection, warehouse: Path) -> int:
    """Add rows to `quarantine` for unattributed quarantined NDJSON lines; returns how many were added."""
    rows = con.execute(
        f"""
        SELECT q.reason_code, q.resource_type, q.pointer, q.run_id, f.source_system, f.landed_path,
               json_extract_string(r.config, '$.landing') AS landing
        FROM wh.ops.quarantine q
        JOIN wh.ops.files f USING (file_sha256)
        LEFT JOIN wh.ops.runs r USING (run_id)
        WHERE q.pointer LIKE '%#ndjson_line=%'
          AND (q.file_sha256, q.unit_position) NOT IN (SELECT file_sha256, unit_position FROM chart)
        ORDER BY q.run_id, q.pointer LIMIT {LIMIT + 1}
        """
    ).fetchall()
    if len(rows) > LIMIT:
        log.warning("more than %d quarantined lines to attribute: the rest are not on the review", LIMIT)
        rows = rows[:LIMIT]
    found, unread = [], 0
    for reason, rtype, pointer, run_id, source_system, landed, landing in rows:
        ids = _ids(warehouse, landing, landed, pointer)
        if ids is None or not RESOURCE_TYPE.fullmatch(rtype or ""):
            unread += 1
        else:
            found.append((rtype, ids[0], ids[1], source_system, reason, pointer, run_id))
    if unread:
        log.info("%d quarantined lines could not be attributed to a patient", unread)
    if not found:
        return 0
    con.execute(
        "CREATE TEMP TABLE landed_q (resource_type VARCHAR, source_id VARCHAR, patient_ref VARCHAR, "
        "source_system VARCHAR, reason_code VARCHAR, pointer VARCHAR, run_id VARCHAR)"
    )
    con.executemany("INSERT INTO landed_q VALUES (?, ?, ?, ?, ?, ?, ?)", found)
    # The stored record with the quarantined line's id (a conflicting duplicate's other version) and the
    # Patient the line references, found by source id within the file's source system.
    wanted = {t for (t,) in con.execute("SELECT DISTINCT resource_type FROM landed_q").fetchall()} | {
        "Patient"
    }
    present = {
        t
        for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = 'wh' AND table_schema = 'fhir'"
        ).fetchall()
    }
    union = " UNION ALL ".join(
        f"SELECT '{t}' AS resource_type, id, source_id, source_system FROM wh.fhir.\"{t}\" "
        "WHERE source_id IN (SELECT source_id FROM landed_q UNION SELECT patient_ref FROM landed_q)"
        for t in sorted(wanted & present)
        if RESOURCE_TYPE.fullmatch(t)
    )
    union = union or "SELECT NULL, NULL, NULL, NULL WHERE FALSE"
    added = con.execute(f"""
        INSERT INTO quarantine
        WITH ids AS ({union})
        SELECT DISTINCT coalesce(rc.person_id, pc.person_id), l.reason_code, l.resource_type, l.pointer,
               l.run_id
        FROM landed_q l
        LEFT JOIN ids r ON r.resource_type = l.resource_type AND r.source_id = l.source_id
                       AND r.source_system = l.source_system
        LEFT JOIN chart rc ON rc.resource_type = l.resource_type AND rc.id = r.id
        LEFT JOIN ids p ON p.resource_type = 'Patient' AND p.source_id = l.patient_ref
                       AND p.source_system = l.source_system
        LEFT JOIN chart pc ON pc.resource_type = 'Patient' AND pc.id = coalesce(p.id, l.patient_ref)
        WHERE coalesce(rc.person_id, pc.person_id) IS NOT NULL
    """).fetchone()[0]
    con.execute("DROP TABLE landed_q")
    return int(added)


def _ids(
    warehouse: Path, landing: str | None, landed: str, pointer: str
) -> tuple[str | None, str | None] | None:
    """The quarantined line's own id and the Patient id it references (either may be absent)."""
    m = _POINTER.search(pointer)
    if m is None or int(m.group(2)) > _MAX_LINE:
        return None
    offset, length = int(m.group(1)), int(m.group(2))
    for root in _roots(warehouse, landing):
        try:
            with (root / landed).open("rb") as fh:
                fh.seek(offset)
                raw = fh.read(length)
        except OSError:
            continue
        try:
            res = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(res, dict):
            return None
        rid = res.get("id") if isinstance(res.get("id"), str) else None
        for field in ("subject", "patient"):
            ref = res.get(field)
            ref = ref.get("reference") if isinstance(ref, dict) else None
            hit = _PATIENT.match(ref) if isinstance(ref, str) else None
            if hit:
                return rid, hit.group(1)
        return (rid, None) if rid else None
    return None


def _roots(warehouse: Path, landing: str | None) -> list[Path]:
    """Where the run's landing zone may be: as recorded if absolute, else beside the warehouse."""
    if not landing:
        return [warehouse.parent / "landing"]
    path = Path(landing)
    return [path] if path.is_absolute() else [warehouse.parent / path, warehouse.parent / path.name]
