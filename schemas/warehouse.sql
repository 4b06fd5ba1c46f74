-- ehrlift warehouse contract, version 7 (additive: 7 added ops.stage_batches; 4 ops.unit_items; 3 the
-- terminology schema; 2 ops.unconsumed and fhir.*.reference_only). Later stages rely on these names: change
-- them only with a migration in pipelines/common/warehouse.py and a note in the README.

CREATE SCHEMA IF NOT EXISTS ops;
CREATE SCHEMA IF NOT EXISTS fhir;
CREATE SCHEMA IF NOT EXISTS views;

CREATE TABLE IF NOT EXISTS ops.schema_version (version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL);

-- One row per run; config is the typed RunConfig as JSON, summary the reconciliation totals.
CREATE TABLE IF NOT EXISTS ops.runs (
    run_id           VARCHAR PRIMARY KEY,
    started_at       TIMESTAMPTZ NOT NULL,
    finished_at      TIMESTAMPTZ,
    status           VARCHAR NOT NULL,      -- running, succeeded, failed
    exit_code        INTEGER,
    ehrlift_version  VARCHAR NOT NULL,
    config           JSON NOT NULL,
    summary          JSON
);

-- Every landed file, once per distinct content.
CREATE TABLE IF NOT EXISTS ops.files (
    file_sha256      VARCHAR PRIMARY KEY,
    size_bytes       BIGINT NOT NULL,
    format           VARCHAR NOT NULL,      -- fhir-ndjson, fhir-bundle, fhir-resource, fhir-bulk-manifest, ...
    format_detail    VARCHAR,               -- e.g. Bundle.type, or why the format is unknown
    source_system    VARCHAR NOT NULL,
    original_name    VARCHAR NOT NULL,      -- base name only: folder paths can carry PHI
    landed_path      VARCHAR NOT NULL,      -- relative to the landing zone
    first_run_id     VARCHAR NOT NULL,
    landed_at        TIMESTAMPTZ NOT NULL
);

-- What each run did with each file it was given (seq orders files within a run).
CREATE TABLE IF NOT EXISTS ops.run_files (
    run_id           VARCHAR NOT NULL,
    seq              INTEGER NOT NULL,
    file_sha256      VARCHAR NOT NULL,
    landing          VARCHAR NOT NULL,      -- landed, already_landed
    handler          VARCHAR,               -- converter that processed it in this run
    status           VARCHAR NOT NULL,      -- pending, converted, already_processed, failed
    units            BIGINT
);

-- One row per input unit: outcome in {converted, quarantined, skipped}.
CREATE TABLE IF NOT EXISTS ops.ledger (
    run_id           VARCHAR NOT NULL,
    file_sha256      VARCHAR NOT NULL,
    unit_position    BIGINT NOT NULL,
    unit_kind        VARCHAR NOT NULL,      -- ndjson_line, bundle_entry, resource, file, ...
    outcome          VARCHAR NOT NULL CHECK (outcome IN ('converted', 'quarantined', 'skipped')),
    reason           VARCHAR,
    resource_count   INTEGER NOT NULL,
    byte_offset      BIGINT,
    byte_length      BIGINT
);

-- Why a unit (or one resource of it) was set aside, and where to find it in the landed file.
-- message is written by ehrlift from structure only: never record values (no PHI).
CREATE TABLE IF NOT EXISTS ops.quarantine (
    run_id           VARCHAR NOT NULL,
    file_sha256      VARCHAR NOT NULL,
    unit_position    BIGINT NOT NULL,
    reason_code      VARCHAR NOT NULL,
    pointer          VARCHAR NOT NULL,      -- landing/<sha256>#<unit kind>=<position>[@<offset>+<length>]
    message          VARCHAR NOT NULL,
    resource_type    VARCHAR,
    quarantined_at   TIMESTAMPTZ NOT NULL
);

-- One row per distinct normalization decision (filled by the terminology stage).
CREATE TABLE IF NOT EXISTS ops.mapping_log (
    run_id               VARCHAR NOT NULL,
    source_system        VARCHAR,
    source_code          VARCHAR,
    source_display       VARCHAR,
    target_system        VARCHAR,
    target_code          VARCHAR,
    target_display       VARCHAR,
    method               VARCHAR NOT NULL,  -- exact, crosswalk, remap, suggestion-approved, unmapped
    reason               VARCHAR,
    terminology_version  VARCHAR,
    crosswalk_version    VARCHAR,
    occurrences          BIGINT NOT NULL DEFAULT 1,
    decision_id          VARCHAR,           -- the value of the mapping-decision extension on added codings
    data_source          VARCHAR,           -- the legacy system the coded resources came from
    kind                 VARCHAR            -- coding, unit
);

-- One row per expectation evaluated (filled by the validation stage); pointers, never values.
CREATE TABLE IF NOT EXISTS ops.validation_results (
    run_id            VARCHAR NOT NULL,
    suite             VARCHAR NOT NULL,
    expectation       VARCHAR NOT NULL,
    severity          VARCHAR NOT NULL CHECK (severity IN ('critical', 'warning')),
    success           BOOLEAN NOT NULL,
    observed_value    VARCHAR,
    unexpected_count  BIGINT,
    record_pointers   JSON,
    evaluated_at      TIMESTAMPTZ NOT NULL
);

-- What converted units held that no mapper consumed (HL7 segments, C-CDA entries), for the loss report.
CREATE TABLE IF NOT EXISTS ops.unconsumed (
    run_id           VARCHAR NOT NULL,
    file_sha256      VARCHAR NOT NULL,
    unit_position    BIGINT NOT NULL,
    container        VARCHAR,               -- message type (ADT^A01), document type, ...
    item             VARCHAR NOT NULL,      -- segment name, entry templateId, ...
    count            INTEGER NOT NULL
);

-- PHI access audit: who read or wrote the PHI tables (fhir.*, views.*) through which ehrlift command.
-- Table names and row counts only, never values.
CREATE TABLE IF NOT EXISTS ops.phi_access (
    accessed_at      TIMESTAMPTZ NOT NULL,
    os_user          VARCHAR NOT NULL,      -- the operating-system account that ran the command
    command          VARCHAR NOT NULL,      -- run, deidentify, ...
    access           VARCHAR NOT NULL CHECK (access IN ('read', 'write')),
    run_id           VARCHAR,               -- the run, when the command belongs to one
    tables           JSON NOT NULL,         -- [{"table": "views.patient", "rows": 200}, ...]
    detail           VARCHAR                -- e.g. the base name of the analyst file written
);

-- ---------------------------------------------------------------------------------------------------
-- terminology: code-system releases in force (the shipped default plus licensed releases a user loads)
-- ---------------------------------------------------------------------------------------------------
CREATE SCHEMA IF NOT EXISTS terminology;

-- One row per release loaded; kind: default, loinc, snomed, rxnorm, cvx, codesystem, conceptmap.
-- active = the release in force for its system; content: complete, or fragment (a subset such as the
-- SNOMED CT Global Patient Set, where a missing code is not evidence that the code does not exist).
CREATE TABLE IF NOT EXISTS terminology.releases (
    kind       VARCHAR NOT NULL,
    system     VARCHAR,
    version    VARCHAR NOT NULL,
    source     VARCHAR NOT NULL,
    sha256     VARCHAR NOT NULL,
    loaded_at  TIMESTAMPTZ NOT NULL,
    concepts   BIGINT NOT NULL,
    active     BOOLEAN NOT NULL,
    content    VARCHAR
);

-- One row per (system, code) in force.
CREATE TABLE IF NOT EXISTS terminology.concepts (
    system         VARCHAR NOT NULL,
    code           VARCHAR NOT NULL,
    display        VARCHAR,
    status         VARCHAR NOT NULL,  -- active | inactive
    status_detail  VARCHAR,           -- the release's own word: DEPRECATED, DISCOURAGED, TRIAL, retired, ...
    version        VARCHAR NOT NULL
);

-- Synonyms, long and short names: what the suggestion engine searches.
CREATE TABLE IF NOT EXISTS terminology.designations (
    system  VARCHAR NOT NULL,
    code    VARCHAR NOT NULL,
    term    VARCHAR NOT NULL,
    use     VARCHAR
);

-- LOINC COMPONENT, PROPERTY, TIME_ASPCT, SYSTEM, SCALE_TYP, METHOD_TYP, CLASS, EXAMPLE_UCUM_UNITS,
-- ORDER_OBS; SNOMED semantic_tag and is_a; RxNorm TTY; ...
CREATE TABLE IF NOT EXISTS terminology.properties (
    system    VARCHAR NOT NULL,
    code      VARCHAR NOT NULL,
    property  VARCHAR NOT NULL,
    value     VARCHAR
);

-- Retired codes and what replaces them: MAP_TO, REPLACED_BY, SAME_AS, POSSIBLY_EQUIVALENT_TO,
-- ALTERNATIVE, RXCUI_REMAP, ...
CREATE TABLE IF NOT EXISTS terminology.replacements (
    system       VARCHAR NOT NULL,
    code         VARCHAR NOT NULL,
    target_code  VARCHAR NOT NULL,
    relation     VARCHAR NOT NULL,
    version      VARCHAR NOT NULL
);

-- Maps between systems: loaded ConceptMaps, NDC -> RxNorm from RXNSAT (map 'rxnorm:ndc'), crosswalks.
CREATE TABLE IF NOT EXISTS terminology.maps (
    map             VARCHAR NOT NULL,
    map_version     VARCHAR NOT NULL,
    source_system   VARCHAR NOT NULL,
    source_code     VARCHAR NOT NULL,
    source_display  VARCHAR,
    target_system   VARCHAR NOT NULL,
    target_code     VARCHAR NOT NULL,
    target_display  VARCHAR,
    equivalence     VARCHAR NOT NULL,
    author          VARCHAR,
    reviewer        VARCHAR,
    review_date     DATE
);

-- Terminology normalization: Millennium code values (from a CODE_VALUE extract), for target-aware codings.
CREATE TABLE IF NOT EXISTS terminology.millennium_code_values (
    code_set         BIGINT NOT NULL,
    code_value       VARCHAR NOT NULL,
    display          VARCHAR,
    concept_cki      VARCHAR,               -- e.g. LOINC!2345-7
    standard_system  VARCHAR,               -- the CKI's system as a canonical URI, when it names one
    standard_code    VARCHAR,
    active           BOOLEAN NOT NULL,
    source           VARCHAR NOT NULL,      -- base name of the extract it was loaded from
    loaded_at        TIMESTAMPTZ NOT NULL
);

-- Unit accounting: per converted unit, part and item kind (a C-CDA section and entry templateId), how many
-- items the unit held and how many a mapper converted. found - converted of a kind, summed over parts,
-- equals its rows in ops.unconsumed (whose item may carry a "(reason)" suffix). Written with the unit's
-- ledger row, in the same transaction.
CREATE TABLE IF NOT EXISTS ops.unit_items (
    run_id         VARCHAR NOT NULL,
    file_sha256    VARCHAR NOT NULL,
    unit_position  BIGINT NOT NULL,
    container      VARCHAR,                -- kind of unit: C-CDA document type, HL7 message type
    part           VARCHAR,                -- where in the unit: C-CDA section templateId; NULL if no parts
    item           VARCHAR NOT NULL,       -- kind of item: entry templateId (or element name), segment
    found          INTEGER NOT NULL,
    converted      INTEGER NOT NULL
);

-- FHIR release declarations: the release a run was told a FHIR file speaks (--fhir-release, or a
-- .fhir-release.csv row in its source folder) and the format the file was read as under it. A file's
-- conversion is keyed by its handler, this format and this release: declaring another release converts
-- it again; the same declaration again adds nothing.
CREATE TABLE IF NOT EXISTS ops.fhir_release_declarations (
    run_id         VARCHAR NOT NULL,
    file_sha256    VARCHAR NOT NULL,
    release        VARCHAR NOT NULL,       -- 1.0 (DSTU2), 3.0 (STU3) or 4.0 (R4)
    declared_by    VARCHAR NOT NULL,       -- run (--fhir-release) or folder (.fhir-release.csv)
    format         VARCHAR NOT NULL,       -- the format under the declared release, e.g. fhir-ndjson-dstu2
    format_detail  VARCHAR
);

-- One row per staged batch the writer merged from a shared stage folder (orchestrated runs, whose
-- convert tasks ran on other workers): a retried merge skips what already committed.
CREATE TABLE IF NOT EXISTS ops.stage_batches (
    run_id       VARCHAR NOT NULL,
    task_index   INTEGER NOT NULL,         -- the group or slice, in commit order
    batch_number INTEGER NOT NULL,         -- its batches, in commit order
    worker       VARCHAR,                  -- host:pid that converted it
    merged_at    TIMESTAMPTZ NOT NULL
);
