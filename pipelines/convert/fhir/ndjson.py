"""FHIR NDJSON (bulk export): each line is one unit, converted set-based in DuckDB, batch by batch.

Python only splits lines (keeping exact line numbers and byte offsets) and decodes UTF-8; DuckDB then
validates, classifies, extracts keys, hashes ids and rewrites references on the JSON text for a whole
batch at once. Lines DuckDB cannot settle alone (a JSON leniency, an id that is not the first or second
member) go through the same per-unit Python path that Bundles use, so both give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import accumulate
from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines import fhir_versions, formats
from pipelines.common import arrow
from pipelines.common.ledger import LedgerWriter
from pipelines.common.unit import (
    BatchConverter,
    FileContext,
    FileResult,
    Skip,
    StagedResource,
    Unit,
    convert_one,
)
from pipelines.convert.fhir.prepare import ResourcePreparer, parse_line
from pipelines.convert.fhir.release import check_release, declared
from pipelines.fhir_structure import check_ambiguous
from pipelines.intake import jsondepth
from pipelines.intake.fhirtypes import known_resource_types

CHUNK_BYTES = 16 << 20
_ASCII_WS = " \t\r\n\x0b\x0c"  # what bytes.strip() removes on the per-unit path
_REF = r'"reference"\s*:\s*"((?:[^"\\]|\\.)*)"'
_REF_NOGROUP = r'"reference"\s*:\s*"(?:[^"\\]|\\.)*"'
_RELATIVE = r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?"
_HEAD_RT_ID = r'^(\{\s*"resourceType"\s*:\s*"[A-Za-z]+"\s*,\s*"id"\s*:\s*")((?:[^"\\]|\\.)*)"'
_HEAD_ID = r'^(\{\s*"id"\s*:\s*")((?:[^"\\]|\\.)*)"'
# What DuckDB's reader tolerates and strict JSON does not: trailing commas, NaN/Infinity, exponents past
# double range. Matched on the raw text, so a match inside a string is a false alarm; it only sends the
# line to the strict Python parser, which decides.
_LENIENT = r"[:\[,]\s*[-+]?(?i:nan|inf)|,\s*[}\]]|[:\[,]\s*-?[0-9.]+[eE][+-]?[0-9]{3}"

_CLASSIFY = """
CREATE OR REPLACE TEMP TABLE _classified AS
WITH src AS (
    SELECT pos, off, len, enc_err, deep, rep, txt, whole FROM _lines
), parsed AS (
    SELECT * EXCLUDE (deep),
        CASE
            WHEN enc_err IS NOT NULL THEN 'invalid_encoding'
            WHEN deep THEN 'json_too_deep'
            WHEN txt = '' THEN 'blank_line'
            WHEN NOT json_valid(txt) THEN 'invalid_json'
            WHEN json_type(txt) <> 'OBJECT' THEN 'not_an_object'
        END AS early,
    FROM src
), keys AS (
    SELECT *,
        CASE WHEN early IS NULL
             THEN json_extract(txt, ['$.resourceType', '$.id', '$.meta.lastUpdated']) END AS k,
        -- JSON parsers keep one value of a repeated member name, at any depth: measured on the text
        -- when the batch was read (jsondepth.repeats)
        early IS NULL AND rep AS repeated
    FROM parsed
), classified AS (
    SELECT pos, off, len, enc_err, txt, whole,
        k[1] ->> '$' AS rtype, k[2] ->> '$' AS sid,
        CASE WHEN json_type(k[3]) = 'VARCHAR' THEN k[3] ->> '$' END AS last_updated,
        coalesce(early,
            CASE
                WHEN repeated THEN 'json_duplicate_key'
                WHEN k[1] IS NULL THEN 'missing_resource_type'
                WHEN json_type(k[1]) <> 'VARCHAR'
                     OR NOT regexp_full_match(k[1] ->> '$', '[A-Z][A-Za-z]{1,63}')
                     OR NOT list_contains($known_types, k[1] ->> '$')
                     THEN 'invalid_resource_type'
                WHEN k[2] IS NOT NULL AND (json_type(k[2]) <> 'VARCHAR'
                     OR NOT regexp_full_match(k[2] ->> '$', '[A-Za-z0-9\\-.]{1,64}')) THEN 'invalid_id'
            END) AS problem,
        early IS NULL AND regexp_matches(txt, $lenient) AS lenient,
        -- SQL places the new id only where the old one is the first or second member (or absent)
        early IS NULL AND k[2] IS NOT NULL
            AND NOT regexp_matches(txt, $head_rt_id) AND NOT regexp_matches(txt, $head_id) AS deep_id
    FROM keys
), checked AS (
    SELECT * EXCLUDE (deep_id),
        -- invalid_json lines go to Python too: orjson names the byte where the syntax breaks; so do
        -- lines whose text hints at another release, where candidates() decides on the parsed resource;
        -- and the one resource of a one-line file under auto, which must be valid R4 to be read as R4
        lenient OR deep_id OR coalesce(problem = 'invalid_json', FALSE)
            OR (problem IS NULL AND (whole OR {not_r4})) AS needs_python
    FROM classified
)
SELECT *,
    CASE WHEN problem IS NULL AND NOT needs_python
         THEN substr(sha256($system || chr(31) || rtype || chr(31)
                            || coalesce(sid, $sha || ':' || pos)), 1, 32)
    END AS new_id
FROM checked
"""


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _not_r4_sql() -> str:
    """A SQL test true for every line that may not be R4 (see fhir_versions.not_in_release_patterns)."""
    types, markers, per_type = fhir_versions.not_in_release_patterns("4.0")
    cases = " ".join(
        f"WHEN {_sql_text(t)} THEN regexp_matches(txt, {_sql_text(p)})" for t, p in sorted(per_type.items())
    )
    return (
        f"(rtype IN ({', '.join(map(_sql_text, sorted(types)))})"
        + "".join(f" OR regexp_matches(txt, {_sql_text(m)})" for m in markers)
        + f" OR CASE rtype {cases} ELSE FALSE END)"
    )


_CLASSIFY = _CLASSIFY.replace("{not_r4}", _not_r4_sql())

# References first (split around every "reference" member and rejoin), then the top-level id.
_REWRITE = """
INSERT INTO _stage
WITH refs AS (
    SELECT pos, rtype, sid, last_updated, new_id, txt, regexp_extract_all(txt, $ref, 1) AS refs
    FROM _classified WHERE new_id IS NOT NULL
), mapped AS (
    SELECT *,
        CASE WHEN len(refs) = 0 THEN txt ELSE array_to_string(list_transform(
            range(1, len(refs) + 2),
            lambda i: pieces[i]
                      || CASE WHEN i <= len(refs) THEN '"reference":"' || new_refs[i] || '"' ELSE '' END
        ), '') END AS body
    FROM (
        SELECT *, regexp_split_to_array(txt, $ref_nogroup) AS pieces,
            list_transform(refs, lambda r: CASE
                WHEN contains(replace(r, '\\/', '/'), '\\') THEN r
                WHEN regexp_full_match(replace(r, '\\/', '/'), $relative) THEN
                    split_part(replace(r, '\\/', '/'), '/', 1) || '/'
                    || substr(sha256($system || chr(31) || split_part(replace(r, '\\/', '/'), '/', 1)
                                     || chr(31) || split_part(replace(r, '\\/', '/'), '/', 2)), 1, 32)
                    || CASE WHEN contains(replace(r, '\\/', '/'), '/_history/')
                            THEN '/_history/' || split_part(replace(r, '\\/', '/'), '/', 4) ELSE '' END
                ELSE r END) AS new_refs
        FROM refs
    )
), headed AS (
    SELECT *,
        regexp_extract(body, $head_rt_id, 1) AS h1, regexp_extract(body, $head_rt_id, 2) AS v1,
        regexp_extract(body, $head_id, 1) AS h2, regexp_extract(body, $head_id, 2) AS v2
    FROM mapped
)
SELECT $run, $seq, $sha, pos, 0, rtype, new_id, $system, sid, sha256(resource), last_updated, resource, FALSE
FROM (
    SELECT *, CASE
        WHEN h1 <> '' THEN h1 || new_id || substr(body, length(h1) + length(v1) + 1)
        WHEN h2 <> '' THEN h2 || new_id || substr(body, length(h2) + length(v2) + 1)
        ELSE '{"id":"' || new_id || '",' || substr(body, 2)  -- no id: classification made sure
    END AS resource
    FROM headed
)
"""

_REWRITE_PATTERNS = {
    "ref": _REF,
    "ref_nogroup": _REF_NOGROUP,
    "relative": _RELATIVE,
    "head_rt_id": _HEAD_RT_ID,
    "head_id": _HEAD_ID,
}

_OUTCOME = """CASE WHEN problem IS NULL THEN 'converted' WHEN problem = 'blank_line' THEN 'skipped'
                   ELSE 'quarantined' END"""

_LEDGER_ROWS = f"""
INSERT INTO ops.ledger
SELECT $run, $sha, pos, 'ndjson_line', {_OUTCOME}, problem,
       CASE WHEN problem IS NULL THEN 1 ELSE 0 END, off, len
FROM _classified WHERE NOT needs_python
"""

_OUTCOMES = f"""
SELECT {_OUTCOME}, count(*), count(*) FILTER (WHERE problem IS NULL)
FROM _classified WHERE NOT needs_python GROUP BY 1
"""

_MESSAGES = """
    CASE problem
        WHEN 'invalid_encoding' THEN 'byte ' || enc_err || ' is not valid UTF-8'
        WHEN 'not_an_object' THEN 'JSON ' || CASE json_type(txt)
            WHEN 'ARRAY' THEN 'array' WHEN 'VARCHAR' THEN 'string' WHEN 'BOOLEAN' THEN 'boolean'
            WHEN 'NULL' THEN 'null' ELSE 'number' END
            || ' where a resource object belongs'
        WHEN 'missing_resource_type' THEN 'JSON object without resourceType'
        WHEN 'invalid_resource_type' THEN 'resourceType is not a FHIR resource type name'
        WHEN 'invalid_id' THEN 'resource id is not a FHIR id'
        WHEN 'json_too_deep' THEN $deep_message
        WHEN 'json_duplicate_key' THEN 'a member name appears twice in one object of the resource'
    END
"""


_QUARANTINE_ROWS = f"""
INSERT INTO ops.quarantine
SELECT $run, $sha, pos, problem, 'landing/' || $sha || '#ndjson_line=' || pos || '@' || off || '+' || len,
       {_MESSAGES}, CASE WHEN problem = 'invalid_id' THEN rtype END, now()
FROM _classified WHERE NOT needs_python AND problem IS NOT NULL AND problem <> 'blank_line'
"""


class FhirNdjsonConverter(BatchConverter):
    name = "fhir-ndjson"
    formats = frozenset({formats.FHIR_NDJSON})

    def convert_file(
        self,
        ctx: FileContext,
        con: duckdb.DuckDBPyConnection,
        writer: LedgerWriter,
        on_progress: Callable[[int], None] | None = None,
        *,
        skip_through: int = 0,
        checkpoint: Callable[[], None] | None = None,
        byte_range: tuple[int, int, int] | None = None,
    ) -> FileResult:
        """byte_range: (start, end, first line position) converts those bytes only, as one batch: a
        range cut where this loop's batches end (pipelines.scale.ranges), so a file converted range by
        range on several workers stages what it stages converted whole."""
        result = FileResult()
        preparer = ResourcePreparer(ctx.source_system, ctx.file_sha256)
        params = {"run": ctx.run_id, "sha": ctx.file_sha256, "seq": ctx.seq, "system": ctx.source_system}
        size = ctx.path.stat().st_size
        batches = _line_batches(ctx.path) if byte_range is None else _range_batch(ctx.path, *byte_range)
        for n, (batch, end_offset) in enumerate(batches):
            # Only a first batch that reaches the end is the whole file (a last batch of one line is not).
            whole = n == 0 and end_offset == size and not declared(ctx) and byte_range is None
            batch = _mark_whole(batch, whole)
            if skip_through:
                # Lines an interrupted run already committed are not converted again.
                # Positions run consecutively through a batch, so those lines are a prefix of it.
                batch = batch.slice(max(0, skip_through - batch["pos"][0].as_py() + 1))
            if batch.num_rows:
                con.register("_lines", batch)
                try:
                    self._convert_batch(con, params, writer, preparer, ctx, result)
                finally:
                    con.unregister("_lines")
                if checkpoint is not None:
                    checkpoint()
            if on_progress is not None:
                on_progress(end_offset)
        return result

    @staticmethod
    def range_chunk_bytes() -> int:
        """Where this converter's batches end: after the last newline within every this many bytes."""
        return CHUNK_BYTES

    def _convert_batch(self, con, params, writer, preparer, ctx, result: FileResult) -> None:
        con.execute(
            _CLASSIFY,
            {
                "system": ctx.source_system,
                "sha": ctx.file_sha256,
                "lenient": _LENIENT,
                "head_rt_id": _HEAD_RT_ID,
                "head_id": _HEAD_ID,
                "known_types": sorted(known_resource_types()),
            },
        )
        con.execute(_REWRITE, {**params, **_REWRITE_PATTERNS})
        keys = {"run": ctx.run_id, "sha": ctx.file_sha256}
        con.execute(_LEDGER_ROWS, keys)
        con.execute(_QUARANTINE_ROWS, {**keys, "deep_message": jsondepth.message()})
        for outcome, n, resources in con.execute(_OUTCOMES).fetchall():
            result.add(outcome, n, resources)
        fallback = con.execute(
            "SELECT pos, off, len, txt, whole FROM _classified WHERE needs_python ORDER BY pos"
        )
        for pos, off, length, txt, whole in fallback.fetchall():
            unit = Unit(pos, "ndjson_line", txt.encode("utf-8"), off, length)
            outcome, resources = convert_one(
                lambda u, whole=whole: self.convert_unit(u, preparer, declared(ctx), whole),
                self.name,
                unit,
                ctx,
                writer,
            )
            result.add(outcome, 1, resources)

    def convert_unit(
        self, unit: Unit, preparer: ResourcePreparer, declared: bool = False, whole: bool = False
    ) -> list[StagedResource]:
        """whole: the line is its file's only resource, read under auto (see _mark_whole)."""
        raw: bytes = unit.payload.strip()
        if not raw:
            raise Skip("blank_line")
        obj = parse_line(raw)
        check_release(obj, "4.0", declared)
        if whole and not declared:
            check_ambiguous(obj)
        return [preparer.prepare(raw, obj, unit.position)]


def _mark_whole(batch: pa.Table, whole_file: bool) -> pa.Table:
    """The batch with a `whole` column: true on every line when the batch is the whole file and holds
    exactly one non-blank line, i.e. a single resource written compactly on one line. Such a file is a
    single-resource file in NDJSON's clothes (its units stay ndjson_line units with their pointers), so
    under auto its resource meets the single-resource rule: fitting an older release as well as R4, it is
    read as R4 only when valid R4. Real exports (two lines or more) keep the per-line release check alone.
    """
    if whole_file:
        # A line that is not UTF-8 (txt null) counts as a line too; counting stops at the second.
        lines = 0
        for text in batch["txt"]:
            lines += not text.is_valid or text.as_py() != ""
            if lines > 1:
                break
        whole_file = lines == 1
    return batch.append_column("whole", arrow.array([whole_file] * batch.num_rows, pa.bool_()))


def _line_batches(path: Path) -> Iterator[tuple[pa.Table, int]]:
    """(batch of lines, byte offset reached) per chunk; positions are 1-based and count blank lines."""
    pos = 0
    offset = 0
    carry = b""
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(CHUNK_BYTES)
            data = carry + chunk if carry else chunk
            if chunk:
                lines = data.split(b"\n")
                carry = lines.pop()
                lengths = [len(line) + 1 for line in lines]
            else:
                lines = [data] if data else []  # a last line without its newline (often a truncated file)
                carry = b""
                lengths = [len(data)] if data else []
            if lines:
                batch, offset = _batch(lines, lengths, pos, offset)
                pos += len(lines)
                yield batch, offset
            if not chunk:
                return


def _range_batch(path: Path, start: int, end: int, first: int) -> Iterator[tuple[pa.Table, int]]:
    """The lines of bytes start..end (cut after a newline, or at the end of the file) as one batch."""
    with path.open("rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    lines = data.split(b"\n")
    if lines[-1]:
        lengths = [len(line) + 1 for line in lines[:-1]] + [len(lines[-1])]  # the file's unterminated end
    else:
        lines.pop()
        lengths = [len(line) + 1 for line in lines]
    if lines:
        yield _batch(lines, lengths, first - 1, start)


def _batch(lines: list[bytes], lengths: list[int], pos: int, offset: int) -> tuple[pa.Table, int]:
    """Lines numbered from pos + 1 that start at byte offset, as the table the SQL reads."""
    if pos == 0:
        lines[0] = lines[0].removeprefix(formats.UTF8_BOM)  # lengths keep the BOM's bytes
    texts, errors = _decode(lines)
    bound = jsondepth.max_depth()
    # Measured on the text before DuckDB or Python builds anything from a line.
    deep = [t is not None and jsondepth.exceeds(t, bound) for t in texts]
    rep = [t is not None and not d and jsondepth.repeats(t) for t, d in zip(texts, deep, strict=True)]
    offsets = list(accumulate(lengths, initial=offset))
    batch = arrow.table(
        {
            "pos": arrow.array(range(pos + 1, pos + 1 + len(lines)), pa.int64()),
            "off": arrow.array(offsets[:-1], pa.int64()),
            "len": arrow.array(lengths, pa.int64()),
            "txt": arrow.array(texts, pa.string()),
            "enc_err": arrow.array(errors, pa.int64()),
            "deep": arrow.array(deep, pa.bool_()),
            "rep": arrow.array(rep, pa.bool_()),
        }
    )
    return batch, offsets[-1]


def _decode(lines: list[bytes]) -> tuple[list[str | None], list[int | None]]:
    try:
        text = b"\n".join(lines).decode("utf-8")
        return [t.strip(_ASCII_WS) for t in text.split("\n")], [None] * len(lines)
    except UnicodeDecodeError:
        texts, errors = [], []
        for line in lines:
            try:
                texts.append(line.decode("utf-8").strip(_ASCII_WS))
                errors.append(None)
            except UnicodeDecodeError as exc:
                texts.append(None)
                errors.append(exc.start)
        return texts, errors
