-- ehrlift warehouse contract, version 18 (additive: 18 added ops.identity_runs; 17
-- ops.backload_plan.site_changes and .server_id and ops.backload_plans.site (site opt-ins of a back-load);
-- 16 ops.run_owners and
-- ops.stage_marks (resume after a kill); 15 ops.retractions, ops.gate_overrides and ops.party_versions;
-- 14 ops.report_signoffs; 12 the ops.backload_hl7_* tables; 10
-- ops.cds_cards and ops.cds_feedback; 9 the ops.backload_* tables; 8 the identity tables
-- ops.identity_links, ops.identity_decisions, ops.identity_models, ops.person_map, ops.person_records,
-- ops.fact_duplicates; 7 ops.stage_batches; 6 ops.run_stages, ops.validation_counts and
-- ops.views_stale; 4 ops.unit_items; 3 the terminology schema; 2 ops.unconsumed and
-- fhir.*.reference_only). Later stages rely on these names: change them only with a migration in
-- pipelines/common/warehouse.py and a note in docs/concepts/warehouse.md.

CREATE SCHEMA IF NOT EXISTS ops;
CREATE SCHEMA IF NOT EXISTS fhir;
CREATE SCHEMA IF NOT EXISTS views;

CREATE TABLE IF NOT EXISTS ops.schema_version (version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL);

-- One row per run; config is the typed RunConfig as JSON, summary the reconciliation totals.
CREATE TABLE IF NOT EXISTS ops.runs (
    run_id           VARCHAR PRIMARY KEY,
    started_at       TIMESTAMPTZ NOT NULL,
    finished_at      TIMESTAMPTZ,
    status           VARCHAR NOT NULL,      -- running, succeeded, blocked, failed, interrupted
    exit_code        INTEGER,
    ehrlift_version  VARCHAR NOT NULL,
    config           JSON NOT NULL,
    summary          JSON
);

-- The process that runs an `ehrlift run` (host, pid, its start time in clock ticks since boot): the next
-- run marks a run `interrupted` when its process is gone (killed), and never a live one.
CREATE TABLE IF NOT EXISTS ops.run_owners (
    run_id           VARCHAR PRIMARY KEY,
    host             VARCHAR NOT NULL,
    pid              INTEGER NOT NULL,
    process_started  VARCHAR NOT NULL,      -- '' where the platform does not tell
    recorded_at      TIMESTAMPTZ NOT NULL
);

-- Stage watermarks: a stage after convert (normalize, load, validate) covered the resources of run_id,
-- done by by_run_id. A killed or failed run's missing marks make the next run's stages take its
-- resources too, so every stage resumes over everything a killed run left unfinished.
CREATE TABLE IF NOT EXISTS ops.stage_marks (
    run_id     VARCHAR NOT NULL,
    stage      VARCHAR NOT NULL,
    by_run_id  VARCHAR NOT NULL,
    marked_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, stage)
);

-- Each stage of a run: wall and CPU seconds and the process's peak RSS when the stage ended, so any
-- run can be profiled after the fact (a retried stage adds a row; the latest counts).
CREATE TABLE IF NOT EXISTS ops.run_stages (
    run_id       VARCHAR NOT NULL,
    stage        VARCHAR NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    seconds      DOUBLE NOT NULL,
    cpu_seconds  DOUBLE NOT NULL,
    peak_rss_mb  DOUBLE NOT NULL,
    pid          INTEGER
);

-- Resource types whose stored resources changed outside the run that wrote them (re-normalization
-- after a crosswalk or terminology change): the next load stage rebuilds their views, then clears them.
CREATE TABLE IF NOT EXISTS ops.views_stale (
    resource_type    VARCHAR PRIMARY KEY
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

-- The row counts behind each expectation's result (rows in its domain, rows it counts as missing), so
-- the run's Data Docs can be rendered later from the warehouse alone (`ehrlift report` does).
CREATE TABLE IF NOT EXISTS ops.validation_counts (
    run_id            VARCHAR NOT NULL,
    expectation       VARCHAR NOT NULL,
    element_count     BIGINT NOT NULL,
    missing_count     BIGINT NOT NULL
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

-- CDS Hooks service (`ehrlift cds-hooks serve`): the cards it issued, by type (never their text), and the
-- clinicians' feedback on them (accepted / overridden, the override reason's code; never a user comment).
-- The service reads a snapshot and queues these rows (and its ops.phi_access rows) in a spool file that it
-- merges when the warehouse is free; event_id makes a merge repeatable without doubles.
CREATE TABLE IF NOT EXISTS ops.cds_cards (
    event_id         VARCHAR NOT NULL,      -- the invocation that issued the card
    card_uuid        VARCHAR NOT NULL,
    service_id       VARCHAR NOT NULL,
    hook             VARCHAR NOT NULL,
    card_type        VARCHAR NOT NULL,      -- a card type of schemas/cds/rules.json
    indicator        VARCHAR NOT NULL,
    issued_at        TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS ops.cds_feedback (
    event_id              VARCHAR NOT NULL,  -- one feedback entry as received
    service_id            VARCHAR NOT NULL,
    card_uuid             VARCHAR NOT NULL,
    outcome               VARCHAR NOT NULL CHECK (outcome IN ('accepted', 'overridden')),
    accepted_suggestions  INTEGER NOT NULL,
    override_system       VARCHAR,
    override_code         VARCHAR,
    outcome_at            TIMESTAMPTZ,
    received_at           TIMESTAMPTZ NOT NULL

);

-- Patient identity. identity_links holds the current decision for every candidate pair of source
-- Patients (replaced whole by each linking run, so a re-run adds nothing); identity_decisions holds the
-- reviewers' decisions, durable across runs, which win over rules and the model.
CREATE TABLE IF NOT EXISTS ops.identity_links (
    left_patient_id   VARCHAR NOT NULL,       -- warehouse Patient ids, left < right
    right_patient_id  VARCHAR NOT NULL,
    method            VARCHAR NOT NULL,       -- rule, model or review
    rule              VARCHAR,                -- the rule, guard or conflict that decided, if any
    model_version     VARCHAR,
    score             DOUBLE,                 -- the model's match probability, when it scored the pair
    decision          VARCHAR NOT NULL,       -- link, no_link or review
    reviewer          VARCHAR,
    run_id            VARCHAR NOT NULL,
    decided_at        TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.identity_decisions (
    left_patient_id   VARCHAR NOT NULL,
    right_patient_id  VARCHAR NOT NULL,
    decision          VARCHAR NOT NULL,       -- link or no_link
    reviewer          VARCHAR NOT NULL,
    decided_at        TIMESTAMPTZ NOT NULL,
    imported_from     VARCHAR                 -- sha256 of the imported review file
);
CREATE TABLE IF NOT EXISTS ops.identity_models (
    run_id            VARCHAR NOT NULL,
    model_version     VARCHAR NOT NULL,
    trained           VARCHAR NOT NULL,       -- em (m by EM), u (u sampled only) or priors (none estimated)
    rules_version     VARCHAR NOT NULL,       -- digest of schemas/identity/*
    records           BIGINT NOT NULL,
    pairs_scored      BIGINT NOT NULL,
    model             JSON NOT NULL,          -- the trained splink model; parameter_estimates per parameter
    created_at        TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.person_map (
    patient_id        VARCHAR NOT NULL,       -- a source Patient's warehouse id
    person_id         VARCHAR NOT NULL,       -- the survivor's id: the person record's id
    survivor          BOOLEAN NOT NULL,
    run_id            VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.person_records (
    person_id         VARCHAR NOT NULL,
    resource          JSON NOT NULL,          -- the surviving Patient, assembled by survivorship rules
    members           INTEGER NOT NULL,
    run_id            VARCHAR NOT NULL
);
-- One row per linking (version 16): a digest of what it depended on (source Patients, reviewers'
-- decisions, identity data files), and the run whose decisions stand: itself, or, when nothing had
-- changed, the earlier run whose decisions it kept without running the model.
CREATE TABLE IF NOT EXISTS ops.identity_runs (
    run_id            VARCHAR NOT NULL,
    input_digest      VARCHAR NOT NULL,       -- sha256 over row hashes: no record values
    source_patients   BIGINT NOT NULL,
    decided_by        VARCHAR NOT NULL,       -- the run whose identity_links and person_map stand
    recorded_at       TIMESTAMPTZ NOT NULL
);
-- The same fact arriving by several paths: every copy but the survivor, never deleted from fhir.*.
CREATE TABLE IF NOT EXISTS ops.fact_duplicates (
    resource_type     VARCHAR NOT NULL,
    resource_id       VARCHAR NOT NULL,
    survivor_id       VARCHAR NOT NULL,
    dedup_key         VARCHAR NOT NULL,       -- a digest of person, code, time and value, never the values
    rule              VARCHAR NOT NULL,
    run_id            VARCHAR NOT NULL
);

-- Back-load (version 9): one row per plan, its entries, the server ids written, and every write's outcome.
CREATE TABLE IF NOT EXISTS ops.backload_plans (
    plan_id          VARCHAR PRIMARY KEY,   -- hash of the plan's entries: same warehouse, same plan
    target           VARCHAR NOT NULL,      -- the profile name (terminology/targets/<name>.json)
    profile_sha256   VARCHAR NOT NULL,
    run_id           VARCHAR NOT NULL,      -- the run whose warehouse state the plan was built from
    override_reason  VARCHAR,               -- set when --override-gate planned a blocked run
    planned_at       TIMESTAMPTZ NOT NULL,
    summary          JSON NOT NULL,         -- counts per type, status and reason
    site             JSON                   -- (17) the site profile: name, sha256, existing target references
);

CREATE TABLE IF NOT EXISTS ops.backload_plan (
    plan_id          VARCHAR NOT NULL,
    seq              INTEGER NOT NULL,      -- send order: dependencies first
    resource_type    VARCHAR NOT NULL,
    warehouse_id     VARCHAR NOT NULL,
    status           VARCHAR NOT NULL,      -- send, not_sendable, unchanged, merged, mapped
    step             VARCHAR NOT NULL,      -- create, update, patch, none
    reason           VARCHAR,               -- schemas/reason_codes.json (not_sendable)
    detail           VARCHAR,               -- element names, never values
    content_sha256   VARCHAR,
    body             JSON,                  -- the request body, references still to warehouse ids
    deferred         JSON,                  -- elements left out of a create and sent by the later update
    site_changes     JSON,                  -- (17) {"dropped": [...], "defaulted": [...]} element names
    server_id        VARCHAR                -- (17) status mapped: the target's existing resource (a Location)
);

-- warehouse id -> server id per target; read by whatever needs the target's id of a resource.
CREATE TABLE IF NOT EXISTS ops.backload_ids (
    target           VARCHAR NOT NULL,
    resource_type    VARCHAR NOT NULL,
    warehouse_id     VARCHAR NOT NULL,
    server_id        VARCHAR NOT NULL,
    version_id       VARCHAR,
    recorded_at      TIMESTAMPTZ NOT NULL,
    server           VARCHAR,               -- the base URL written to
    content_sha256   VARCHAR                -- the body last written, for `unchanged`
);

-- One row per write attempt outcome: an 'intent' row is written before the request, its outcome after.
CREATE TABLE IF NOT EXISTS ops.backload_results (
    plan_id          VARCHAR NOT NULL,
    seq              INTEGER NOT NULL,
    target           VARCHAR NOT NULL,
    resource_type    VARCHAR NOT NULL,
    warehouse_id     VARCHAR NOT NULL,
    step             VARCHAR NOT NULL,
    state            VARCHAR NOT NULL,      -- intent, created, updated, resolved, failed
    http_status      INTEGER,
    issue_codes      VARCHAR,               -- OperationOutcome issue codes, never diagnostics
    attempts         INTEGER,
    server_id        VARCHAR,
    recorded_at      TIMESTAMPTZ NOT NULL
);

-- HL7 v2 back-load (version 12): one row per planned message and one per send outcome (the twin of
-- ops.backload_plan/ops.backload_results for MLLP feeds). Control ids are recorded before anything is sent.
CREATE TABLE IF NOT EXISTS ops.backload_hl7_messages (
    plan_id          VARCHAR NOT NULL,      -- hash of the plan's control ids and statuses
    seq              INTEGER NOT NULL,      -- send order: per patient, registration first
    target           VARCHAR NOT NULL,      -- profile name
    kind             VARCHAR NOT NULL,      -- adt, oru, vxu, mdm
    message_type     VARCHAR,               -- MSH-9 (e.g. ORU^R01)
    resource_type    VARCHAR NOT NULL,
    warehouse_id     VARCHAR NOT NULL,
    patient_id       VARCHAR,               -- the surviving Patient's warehouse id
    status           VARCHAR NOT NULL,      -- send, not_sendable, unchanged
    reason           VARCHAR,               -- schemas/reason_codes.json (not_sendable)
    detail           VARCHAR,               -- segment and field names, never values
    control_id       VARCHAR,               -- MSH-10, deterministic from the content
    content_sha256   VARCHAR,
    message          VARCHAR,               -- the message as sent (segments joined by CR)
    planned_at       TIMESTAMPTZ NOT NULL,
    run_id           VARCHAR                -- the run whose warehouse state the plan was built from
);

CREATE TABLE IF NOT EXISTS ops.backload_hl7_results (
    plan_id          VARCHAR NOT NULL,
    seq              INTEGER NOT NULL,
    target           VARCHAR NOT NULL,
    control_id       VARCHAR NOT NULL,
    state            VARCHAR NOT NULL,      -- done (AA), failed, retry
    ack_code         VARCHAR,               -- MSA-1: AA, AE, AR, CA, CE, CR; none when no ACK came
    error_codes      VARCHAR,               -- ERR-3 (table 0357) codes, never ERR texts or values
    attempts         INTEGER NOT NULL,
    recorded_at      TIMESTAMPTZ NOT NULL
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

-- Compliance report sign-offs (version 14, `ehrlift report sign`): who signed which report data, as what,
-- with which decision. signoff_sha256 is the sha256 of the signed copy (the canonical JSON of these fields
-- and the report's data digest, written beside the report), so a changed report or sign-off is detectable.
-- Reviewer and role are staff names as typed; never patient values.
CREATE TABLE IF NOT EXISTS ops.report_signoffs (
    signoff_sha256   VARCHAR NOT NULL,
    run_id           VARCHAR NOT NULL,
    data_sha256      VARCHAR NOT NULL,      -- sha256 of the report's canonical data JSON that was signed
    reviewer         VARCHAR NOT NULL,
    role             VARCHAR NOT NULL,
    decision         VARCHAR NOT NULL CHECK (decision IN ('approved', 'approved-with-conditions', 'rejected')),
    note             VARCHAR,
    signed_at        TIMESTAMPTZ NOT NULL,
    ehrlift_version  VARCHAR NOT NULL
);

-- Retractions (version 15): a run's or a file's resources taken out of the warehouse (the ledger keeps
-- the history; the landing zone keeps the file). One row per retraction and file.
CREATE TABLE IF NOT EXISTS ops.retractions (
    retraction_id VARCHAR NOT NULL,
    run_id        VARCHAR,                 -- with `ehrlift retract --run`: the run retracted
    file_sha256   VARCHAR NOT NULL,        -- a file whose resources (of that run, or all) left fhir.*
    resources     BIGINT NOT NULL,         -- resources removed from fhir.* for this file
    reason        VARCHAR NOT NULL,        -- the operator's reason (required)
    os_user       VARCHAR,
    retracted_at  TIMESTAMPTZ NOT NULL
);

-- Data-quality gate overrides: a run whose critical expectations failed, finished as succeeded because
-- an operator said why (`ehrlift run --override-gate --reason TEXT`).
CREATE TABLE IF NOT EXISTS ops.gate_overrides (
    run_id          VARCHAR NOT NULL,
    reason          VARCHAR NOT NULL,
    critical_failed VARCHAR NOT NULL,      -- JSON list of the failed expectations' names
    os_user         VARCHAR,
    recorded_at     TIMESTAMPTZ NOT NULL
);

-- Every distinct version of a person or organization that is merged across documents (see
-- schemas/party_merge.json), as it arrived: a retraction recomputes the merged resource from the
-- versions that remain.
CREATE TABLE IF NOT EXISTS ops.party_versions (
    resource_type  VARCHAR NOT NULL,
    id             VARCHAR NOT NULL,
    content_sha256 VARCHAR NOT NULL,
    file_sha256    VARCHAR NOT NULL,
    unit_position  BIGINT,
    run_id         VARCHAR NOT NULL,
    source_system  VARCHAR,
    source_id      VARCHAR,
    last_updated   VARCHAR,
    resource       VARCHAR NOT NULL
);
