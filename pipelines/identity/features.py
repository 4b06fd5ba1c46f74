"""Linking features of every source Patient, its identifiers and links, read with SQL from fhir.Patient."""

from __future__ import annotations

import duckdb

from pipelines.common.warehouse import RESOURCE_TABLE_DDL, resource_tables
from pipelines.identity.config import IdentityConfig

# Letters only, upper case, accents folded: "Muñoz" and "MUNOZ" compare equal, "O'Brien" and "OBRIEN" too.
_CLEAN = "nullif(regexp_replace(upper(strip_accents(coalesce({0}, ''))), '[^A-Z]', '', 'g'), '')"


def patient_table(con: duckdb.DuckDBPyConnection) -> str:
    """fhir.Patient, or an empty stand-in when no Patient was loaded (the warehouse is not changed)."""
    if "Patient" in resource_tables(con):
        return 'fhir."Patient"'
    ddl = RESOURCE_TABLE_DDL.format(rtype="Patient")
    con.execute(
        ddl.replace(
            'CREATE TABLE IF NOT EXISTS fhir."Patient"', "CREATE OR REPLACE TEMP TABLE id_no_patients"
        )
    )
    return "id_no_patients"


def build_features(con: duckdb.DuckDBPyConnection, cfg: IdentityConfig) -> int:
    """TEMP tables id_features, id_identifiers, id_links and id_nodes; returns the number of source Patients.

    id_nodes (id, n, present) numbers every source Patient, and every Patient a reviewer decided on, in
    id order: the pairs and everything made of them (scores, decisions, components) carry these integer
    numbers rather than the ids' strings, a tenth of the memory per pair, and the smaller number is the
    smaller id, so pairs keep the order of their ids.
    """
    table = patient_table(con)
    con.execute("CREATE OR REPLACE TEMP TABLE id_nicknames (nickname VARCHAR, given VARCHAR)")
    con.executemany("INSERT INTO id_nicknames VALUES (?, ?)", cfg.nicknames)
    con.execute("CREATE OR REPLACE TEMP TABLE id_given_raw (name VARCHAR)")
    con.executemany("INSERT INTO id_given_raw VALUES (?)", [(n,) for n in cfg.given_names])
    con.execute(
        "CREATE OR REPLACE TEMP TABLE id_given AS "
        f"SELECT DISTINCT {_CLEAN.format('name')} AS name FROM id_given_raw"
    )
    con.execute("CREATE OR REPLACE TEMP TABLE id_aliases (system VARCHAR, canonical VARCHAR)")
    if cfg.aliases:
        con.executemany("INSERT INTO id_aliases VALUES (?, ?)", list(cfg.aliases.items()))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE id_settings AS "
        "SELECT CAST(? AS VARCHAR) AS placeholder, CAST(? AS INTEGER) AS max_group, "
        "CAST(? AS VARCHAR) AS tail_system",
        [
            cfg.rules.get("placeholder_identifier_values", "^$"),
            int(cfg.rules.get("max_patients_per_identifier", 25)),
            cfg.rules.get("id_tail_system", ""),
        ],
    )
    given = _CLEAN.format("r ->> '$.name[0].given[0]'")
    family = _CLEAN.format("r ->> '$.name[0].family'")
    tail = int(cfg.rules.get("id_tail_digits", 4))
    similarity = float(cfg.thresholds.get("given_like_similarity", 0.88))
    con.execute(
        f"""
        -- A view, not a copy: the resources stay in the warehouse's own (evictable) blocks.
        CREATE OR REPLACE TEMP VIEW id_source AS
        SELECT p.id, p.resource AS r, p.source_system, coalesce(f.format, 'unknown') AS format,
            p.last_updated
        FROM {table} p LEFT JOIN ops.files f USING (file_sha256)
        WHERE NOT p.reference_only;
        CREATE OR REPLACE TEMP TABLE id_identifiers AS
        SELECT DISTINCT s.id AS patient_id, coalesce(a.canonical, i ->> '$.system') AS system,
            i ->> '$.value' AS value
        FROM id_source s, unnest(CAST(json_extract(s.r, '$.identifier[*]') AS JSON[])) AS t(i)
        LEFT JOIN id_aliases a ON a.system = i ->> '$.system'
        WHERE i ->> '$.system' IS NOT NULL AND i ->> '$.value' IS NOT NULL
            AND NOT regexp_full_match(lower(regexp_replace(i ->> '$.value', '[\\s.-]', '', 'g')),
                (SELECT placeholder FROM id_settings));
        -- A value shared by too many records is a placeholder (a default SSN, a test MRN), not a person.
        DELETE FROM id_identifiers WHERE (system, value) IN (
            SELECT system, value FROM id_identifiers GROUP BY ALL
            HAVING count(DISTINCT patient_id) > (SELECT max_group FROM id_settings)
        );
        CREATE OR REPLACE TEMP TABLE id_links AS
        SELECT s.id AS patient_id, regexp_replace(l ->> '$.other.reference', '^.*Patient/', '') AS other_id,
            l ->> '$.type' AS link_type, s.format
        FROM id_source s, unnest(CAST(json_extract(s.r, '$.link[*]') AS JSON[])) AS t(l)
        WHERE l ->> '$.other.reference' IS NOT NULL;
        -- A family field holding (a misspelling of) a known given name: the sign of a record whose
        -- names may be the wrong way round (names compared once each, not per record).
        CREATE OR REPLACE TEMP TABLE id_given_like AS
        SELECT DISTINCT f.family FROM (
            SELECT {family} AS family FROM id_source UNION SELECT {given} FROM id_source
        ) f, id_given g
        WHERE f.family IS NOT NULL AND jaro_winkler_similarity(f.family, g.name) >= {similarity};
        CREATE OR REPLACE TEMP TABLE id_features AS
        WITH raw AS (
            SELECT *, {given} AS given0, {family} AS family0 FROM id_source
        ),
        oriented AS (
            -- Given and family entered in each other's fields: the family field holds a known given name
            -- and the given field does not. Reading them back the right way round keeps twins apart.
            SELECT raw.*,
                (family0 IN (SELECT name FROM id_given)
                    AND given0 NOT IN (SELECT name FROM id_given)) AS swapped
            FROM raw
        ),
        base AS (
            SELECT id AS unique_id, source_system, format,
                CASE WHEN swapped THEN family0 ELSE given0 END AS given,
                CASE WHEN swapped THEN given0 ELSE family0 END AS family,
                CASE WHEN regexp_full_match(r ->> '$.birthDate', '\\d{{4}}-\\d{{2}}-\\d{{2}}')
                    THEN r ->> '$.birthDate' END AS birth_date,
                nullif(r ->> '$.gender', 'unknown') AS sex,
                nullif(left(r ->> '$.address[0].postalCode', 5), '') AS postcode,
                nullif(regexp_replace(upper(coalesce(r ->> '$.address[0].line[0]', '')),
                    '[^A-Z0-9]', '', 'g'), '') AS street,
                nullif(right(regexp_replace(coalesce(r ->> '$.telecom[0].value', ''),
                    '[^0-9]', '', 'g'), 10), '') AS phone
            FROM oriented
        )
        SELECT b.*, coalesce(n.given, b.given) AS given_nick,
            b.family IN (SELECT family FROM id_given_like) AS family_given_like,
            TRY_CAST(left(b.birth_date, 4) AS INTEGER) AS birth_year,
            CASE WHEN b.birth_date IS NOT NULL
                THEN left(b.birth_date, 5) || substr(b.birth_date, 9, 2) || '-' || substr(b.birth_date, 6, 2)
            END AS birth_date_swapped,
            (SELECT nullif(right(regexp_replace(min(i.value), '[^0-9]', '', 'g'), {tail}), '')
             FROM id_identifiers i WHERE i.patient_id = b.unique_id
                AND i.system = (SELECT tail_system FROM id_settings)) AS id_tail
        FROM base b LEFT JOIN id_nicknames n ON n.nickname = b.given
        ORDER BY b.unique_id
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE id_nodes AS
        WITH ids AS (
            SELECT unique_id AS id, true AS present FROM id_features
            UNION ALL SELECT left_patient_id, false FROM ops.identity_decisions
            UNION ALL SELECT right_patient_id, false FROM ops.identity_decisions
        )
        SELECT id, CAST(row_number() OVER (ORDER BY id) AS INTEGER) AS n, present
        FROM (SELECT id, bool_or(present) AS present FROM ids GROUP BY id)
        ORDER BY id
        """
    )
    return int(con.execute("SELECT count(*) FROM id_features").fetchall()[0][0])
