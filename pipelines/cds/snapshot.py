"""The service's read-only snapshot: per-person review facts copied from the warehouse into memory.

DuckDB lets one process write a database file, and while a writer holds it no other process can open it,
not even read-only; a reader holding it likewise blocks the next `ehrlift run`. So the service attaches the
warehouse read-only only long enough to copy the few narrow tables it answers from (set-based SQL, a few
seconds for 10k patients), detaches, and keeps what a call reads in dictionaries (review document,
identifiers, back-load ids, order-check records per person). A refresh that finds the warehouse busy
keeps serving the previous snapshot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from pipelines.cds import landing
from pipelines.cds.documents import summarize
from pipelines.cds.matching import Fact, Matching, Terms, copy_terms
from pipelines.cds.matching import facts as match_facts
from pipelines.common.errors import WarehouseError
from pipelines.common.warehouse import RESOURCE_TYPE, SCHEMA_VERSION

log = logging.getLogger(__name__)

EXT_METHOD = "urn:ehrlift:extension:mapping-method"
_NOT_CHART = frozenset(
    {
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Location",
        "Device",
        "Medication",
        "Substance",
    }
)
# Where a resource keeps its clinically meaningful date; the first present wins.
_DATE_PATHS = (
    "effectiveDateTime",
    "effectivePeriod.start",
    "effectiveInstant",
    "onsetDateTime",
    "onsetPeriod.start",
    "recordedDate",
    "authoredOn",
    "performedDateTime",
    "performedPeriod.start",
    "occurrenceDateTime",
    "period.start",
    "issued",
    "dateAsserted",
    "date",
)
# Which CodeableConcept holds what an item *is*, per reviewed type.
_CODE_PATH = {
    "Condition": "code",
    "AllergyIntolerance": "code",
    "Observation": "code",
    "MedicationRequest": "medicationCodeableConcept",
    "MedicationStatement": "medicationCodeableConcept",
}
_STATUS_PATH = {
    "Condition": "clinicalStatus.coding[0].code",
    "AllergyIntolerance": "clinicalStatus.coding[0].code",
    "MedicationRequest": "status",
    "MedicationStatement": "status",
    "Observation": "status",
}


@dataclass
class Snapshot:
    """One in-memory copy: what a call reads is in dictionaries; DuckDB only expands draft-order codes."""

    con: duckdb.DuckDBPyConnection
    taken_at: float
    warehouse_state: tuple[float | None, float | None]
    persons: int
    generation: int
    records: int = 0
    docs: dict[str, bytes] = field(default_factory=dict)  # person -> review document (JSON)
    identifiers: dict[str, tuple[tuple[str, str], ...]] = field(
        default_factory=dict
    )  # value -> (system, person)
    backload: dict[str, str] = field(default_factory=dict)  # EHR patient id -> person
    facts: dict[str, tuple[Fact, ...]] = field(default_factory=dict)  # person -> order-check facts
    terms: Terms | None = None


def _tables(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for schema, table, column in con.execute(
        "SELECT table_schema, table_name, column_name FROM information_schema.columns "
        "WHERE table_catalog = 'wh' ORDER BY ordinal_position"
    ).fetchall():
        found.setdefault((schema, table), []).append(column)
    return found


def _has(tables: dict[tuple[str, str], list[str]], schema: str, table: str, *columns: str) -> bool:
    cols = tables.get((schema, table))
    return cols is not None and all(c in cols for c in columns)


def _json_path(path: str) -> str:
    return "$." + path


def _chart_sql(types: list[str]) -> str:
    date = "coalesce(" + ", ".join(f"r.resource->>'{_json_path(p)}'" for p in _DATE_PATHS) + ")"
    parts = [
        "SELECT 'Patient' AS resource_type, id, id AS patient_id, source_system, run_id, file_sha256, "
        'unit_position, NULL::DATE AS day FROM wh.fhir."Patient" WHERE NOT reference_only'
    ]
    for rtype in types:
        parts.append(
            f"SELECT '{rtype}', r.id, nullif(regexp_extract(coalesce(r.resource->>'$.subject.reference', "
            f"r.resource->>'$.patient.reference'), '^Patient/(.+)$', 1), ''), r.source_system, r.run_id, "
            f"r.file_sha256, r.unit_position, TRY_CAST(left({date}, 10) AS DATE) "
            f'FROM wh.fhir."{rtype}" r WHERE NOT r.reference_only'
        )
    return " UNION ALL ".join(parts)


def _coded_sql(types: list[str]) -> str:
    parts = []
    for rtype in types:
        path = _CODE_PATH[rtype]
        status = f"r.resource->>'{_json_path(_STATUS_PATH[rtype])}'"
        category = "r.resource->>'$.category[0].coding[0].code'" if rtype == "Observation" else "NULL"
        parts.append(
            f"SELECT '{rtype}' AS resource_type, r.id, {status} AS status, {category} AS category, "
            f"c.value->>'system' AS system, c.value->>'code' AS code, c.value->>'display' AS display, "
            f"r.resource->>'$.{path}.text' AS text, "
            f"(SELECT e.value->>'valueCode' FROM json_each(c.value, '$.extension') e "
            f" WHERE e.value->>'url' = '{EXT_METHOD}' LIMIT 1) AS added_method, r.source_system "
            f"FROM wh.fhir.\"{rtype}\" r, json_each(r.resource, '$.{path}.coding') c "
            f"WHERE NOT r.reference_only"
        )
    return " UNION ALL ".join(parts)


def build(
    warehouse: Path, rules: dict[str, Any], generation: int = 1, matching: Matching | None = None
) -> Snapshot:
    """Copy the review tables out of the warehouse; the file is attached only while copying."""
    if not warehouse.exists():
        raise WarehouseError(
            f"no warehouse at {warehouse}", hint="run `ehrlift run` first or pass --warehouse"
        )
    state = file_state(warehouse)
    con = duckdb.connect(":memory:")
    try:
        con.execute("ATTACH ? AS wh (READ_ONLY)", [str(warehouse)])
    except duckdb.IOException as exc:
        con.close()
        if "lock" in str(exc).lower():
            raise WarehouseError(
                f"the warehouse {warehouse} is open for writing in another process",
                hint="the service retries at its next refresh; it keeps serving its previous snapshot",
            ) from None
        raise WarehouseError(f"cannot open the warehouse {warehouse}: {exc}") from None
    matching = matching or Matching.load()
    try:
        _copy(con, rules, matching, warehouse)
    finally:
        con.execute("DETACH wh")
    records = summarize(con, rules)
    docs = {p: d.encode() for p, d in con.execute("SELECT person_id, doc FROM docs").fetchall()}
    idents: dict[str, list[tuple[str, str]]] = {}
    for value, system, person in con.execute(
        "SELECT value, system, person_id FROM pid ORDER BY ALL"
    ).fetchall():
        idents.setdefault(value, []).append((system, person))
    backload = dict(con.execute("SELECT server_id, person_id FROM backload").fetchall())
    facts = match_facts(con, rules, matching)
    # What stays in DuckDB is only the terminology for draft-order codes: point lookups, cached.
    for catalog, schema, table in con.execute(
        "SELECT table_catalog, table_schema, table_name FROM information_schema.tables "
        "WHERE table_name NOT IN ('equiv', 'ingredient')"
    ).fetchall():
        con.execute(f'DROP TABLE "{catalog}"."{schema}"."{table}"')
    con.execute("SET threads = 1")
    return Snapshot(
        con,
        time.time(),
        state,
        len(docs),
        generation,
        records,
        docs,
        {v: tuple(p) for v, p in idents.items()},
        backload,
        facts,
        Terms(con, matching),
    )


def file_state(warehouse: Path) -> tuple[float | None, float | None]:
    """When the warehouse file and its write-ahead log last changed: what tells a refresh to copy again."""

    def mtime(path: Path) -> float | None:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return None

    return mtime(warehouse), mtime(warehouse.with_name(warehouse.name + ".wal"))


def _check_version(con: duckdb.DuckDBPyConnection, tables: dict[tuple[str, str], list[str]]) -> None:
    if not _has(tables, "ops", "schema_version"):
        raise WarehouseError("the file is not an ehrlift warehouse (no ops.schema_version)")
    found = con.execute("SELECT max(version) FROM wh.ops.schema_version").fetchone()[0]
    if found is not None and found > SCHEMA_VERSION:
        raise WarehouseError(
            f"the warehouse has contract version {found}, newer than this ehrlift's {SCHEMA_VERSION}",
            hint="upgrade ehrlift",
        )


def _copy(con: duckdb.DuckDBPyConnection, rules: dict[str, Any], matching: Matching, warehouse: Path) -> None:
    tables = _tables(con)
    _check_version(con, tables)
    fhir = [t for (s, t) in tables if s == "fhir" and RESOURCE_TYPE.fullmatch(t)]
    chart_types = sorted(t for t in fhir if t not in _NOT_CHART)
    coded_types = sorted(t for t in fhir if t in _CODE_PATH)

    # person: a source Patient's person (identity stage) or the Patient itself.
    if _has(tables, "ops", "person_map", "patient_id", "person_id", "run_id"):
        person = (
            "SELECT patient_id, arg_max(person_id, run_id) AS person_id "
            "FROM wh.ops.person_map GROUP BY patient_id"
        )
    else:
        person = "SELECT NULL::VARCHAR AS patient_id, NULL::VARCHAR AS person_id WHERE FALSE"
    con.execute(f"CREATE TEMP TABLE pm AS {person}")
    if "Patient" in fhir:
        con.execute(f"CREATE TEMP TABLE raw_chart AS {_chart_sql(chart_types)}")
    else:
        con.execute(
            "CREATE TEMP TABLE raw_chart (resource_type VARCHAR, id VARCHAR, patient_id VARCHAR, "
            "source_system VARCHAR, run_id VARCHAR, file_sha256 VARCHAR, unit_position BIGINT, day DATE)"
        )
    con.execute("""
        CREATE TABLE chart AS
        SELECT coalesce(pm.person_id, c.patient_id) AS person_id, c.*
        FROM raw_chart c LEFT JOIN pm USING (patient_id)
        WHERE c.patient_id IS NOT NULL ORDER BY person_id
    """)
    con.execute("CREATE INDEX chart_person ON chart (person_id)")

    # Identifiers and back-load ids: how an EHR's patient finds its person here.
    if "Patient" in fhir:
        con.execute("""
            CREATE TABLE pid AS
            SELECT DISTINCT i.value->>'system' AS system, i.value->>'value' AS value,
                   coalesce(pm.person_id, p.id) AS person_id
            FROM wh.fhir."Patient" p, json_each(p.resource, '$.identifier') i
            LEFT JOIN pm ON pm.patient_id = p.id
            WHERE NOT p.reference_only AND i.value->>'system' IS NOT NULL AND i.value->>'value' IS NOT NULL
        """)
    else:
        con.execute("CREATE TABLE pid (system VARCHAR, value VARCHAR, person_id VARCHAR)")
    if _has(tables, "ops", "backload_ids", "resource_type", "warehouse_id", "server_id", "recorded_at"):
        con.execute("""
            CREATE TABLE backload AS
            SELECT b.server_id, coalesce(pm.person_id, b.warehouse_id) AS person_id
            FROM (SELECT server_id, arg_max(warehouse_id, recorded_at) AS warehouse_id
                  FROM wh.ops.backload_ids WHERE resource_type = 'Patient' GROUP BY server_id) b
            LEFT JOIN pm ON pm.patient_id = b.warehouse_id
        """)
    else:
        con.execute("CREATE TABLE backload (server_id VARCHAR, person_id VARCHAR)")

    _copy_coded(con, tables, coded_types, rules)
    _copy_ops(con, tables)
    if _has(tables, "ops", "files", "landed_path") and _has(tables, "ops", "runs", "config"):
        landing.attribute(con, warehouse)
    copy_terms(con, tables, matching)


def _copy_coded(con: duckdb.DuckDBPyConnection, tables: dict, coded_types: list[str], rules: dict) -> None:
    if coded_types:
        con.execute(f"CREATE TEMP TABLE raw_coded AS {_coded_sql(coded_types)}")
    else:
        con.execute(
            "CREATE TEMP TABLE raw_coded (resource_type VARCHAR, id VARCHAR, status VARCHAR, "
            "category VARCHAR, "
            "system VARCHAR, code VARCHAR, display VARCHAR, text VARCHAR, added_method VARCHAR, "
            "source_system VARCHAR)"
        )
    if _has(tables, "ops", "mapping_log", "source_system", "source_code", "method", "data_source", "kind"):
        # The latest run's decision per source coding: a later crosswalk may have mapped it since.
        con.execute("""
            CREATE TEMP TABLE ml AS
            SELECT source_system, source_code, data_source, arg_max(method, run_id) AS method
            FROM wh.ops.mapping_log WHERE coalesce(kind, 'coding') = 'coding' GROUP BY ALL
        """)
    else:
        con.execute(
            "CREATE TEMP TABLE ml (source_system VARCHAR, source_code VARCHAR, data_source VARCHAR, "
            "method VARCHAR)"
        )
    active = rules["active_status"]
    active_sql = (
        " OR ".join(
            f"(k.resource_type = '{rtype}' AND "
            + (
                "(k.status IS NULL OR k.status IN (" + ", ".join(f"'{s}'" for s in statuses if s) + ")))"
                if None in statuses
                else "k.status IN (" + ", ".join(f"'{s}'" for s in statuses) + "))"
            )
            for rtype, statuses in active.items()
            if RESOURCE_TYPE.fullmatch(rtype)
            and all(s is None or s.replace("-", "").isalpha() for s in statuses)
        )
        or "FALSE"
    )
    con.execute(f"""
        CREATE TABLE coded AS
        SELECT c.person_id, k.resource_type, k.id, ({active_sql}) AS active, k.status, k.category, k.system,
               k.code, coalesce(k.text, k.display) AS label, c.day,
               coalesce(k.added_method, ml.method) AS method
        FROM raw_coded k JOIN chart c ON c.resource_type = k.resource_type AND c.id = k.id
        LEFT JOIN ml ON ml.source_system = k.system AND ml.source_code = k.code
                    AND ml.data_source = k.source_system
        ORDER BY c.person_id
    """)
    con.execute("CREATE INDEX coded_person ON coded (person_id)")


def _copy_ops(con: duckdb.DuckDBPyConnection, tables: dict) -> None:
    if _has(tables, "ops", "quarantine", "file_sha256", "unit_position", "reason_code", "pointer"):
        # A quarantined item belongs to a person when the same input unit (message, document, Bundle)
        # also produced that person's records; a unit that yielded nothing at all cannot be attributed.
        con.execute("""
            CREATE TABLE quarantine AS
            SELECT DISTINCT u.person_id, q.reason_code, q.resource_type, q.pointer, q.run_id
            FROM wh.ops.quarantine q
            JOIN (SELECT DISTINCT person_id, file_sha256, unit_position FROM chart) u
              USING (file_sha256, unit_position)
            ORDER BY u.person_id
        """)
    else:
        con.execute(
            "CREATE TABLE quarantine (person_id VARCHAR, reason_code VARCHAR, resource_type VARCHAR, "
            "pointer VARCHAR, run_id VARCHAR)"
        )
    if _has(tables, "ops", "identity_links", "left_patient_id", "right_patient_id", "decision", "decided_at"):
        con.execute("""
            CREATE TABLE identity_review AS
            WITH latest AS (
                SELECT left_patient_id, right_patient_id, arg_max(decision, decided_at) AS decision,
                       arg_max(score, decided_at) AS score, arg_max(method, decided_at) AS method
                FROM wh.ops.identity_links GROUP BY ALL
            ), sides AS (
                SELECT left_patient_id AS patient_id, right_patient_id AS other_id, score, method
                FROM latest WHERE decision = 'review'
                UNION ALL
                SELECT right_patient_id, left_patient_id, score, method FROM latest WHERE decision = 'review'
            )
            SELECT DISTINCT coalesce(pm.person_id, s.patient_id) AS person_id, s.patient_id, s.other_id,
                   s.score, s.method
            FROM sides s LEFT JOIN pm USING (patient_id)
        """)
    else:
        con.execute(
            "CREATE TABLE identity_review (person_id VARCHAR, patient_id VARCHAR, other_id VARCHAR, "
            "score DOUBLE, method VARCHAR)"
        )
    if _has(tables, "ops", "fact_duplicates", "resource_type", "resource_id", "survivor_id", "rule"):
        con.execute("""
            CREATE TABLE duplicates AS
            SELECT DISTINCT c.person_id, d.resource_type, d.resource_id, d.survivor_id, d.rule
            FROM wh.ops.fact_duplicates d
            JOIN chart c ON c.resource_type = d.resource_type AND c.id = d.resource_id
        """)
    else:
        con.execute(
            "CREATE TABLE duplicates (person_id VARCHAR, resource_type VARCHAR, resource_id VARCHAR, "
            "survivor_id VARCHAR, rule VARCHAR)"
        )
