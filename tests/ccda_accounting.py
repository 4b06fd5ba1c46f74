"""Checks that the warehouse's per-document entry counts (ops.unit_items) agree with ops.unconsumed."""

from __future__ import annotations

from collections import Counter

import duckdb

# Unconsumed items that are about the document, not an entry: they have no found/converted counts.
DOCUMENT_ITEMS = {"ClinicalDocument without the urn:hl7-org:v3 namespace (adopted)"}
# Narrative markup the Composition could not carry is counted per document, not per entry.
DOCUMENT_PREFIXES = ("section narrative: ",)


def entry_accounting(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """Assert found - converted = not consumed for every C-CDA document and entry kind; (documents, found)."""
    assert not con.execute("SELECT count(*) FROM ops.unit_items WHERE part IS NULL").fetchone()[0]
    items = con.execute(
        "SELECT i.file_sha256, i.unit_position, i.item, sum(i.found), sum(i.converted) FROM ops.unit_items i "
        "JOIN ops.files f USING (file_sha256) WHERE f.format = 'ccda' GROUP BY ALL"
    ).fetchall()
    expected: Counter[tuple[str, int, str]] = Counter()
    for sha, position, item, found, converted in items:
        assert 0 <= converted <= found, (item, found, converted)
        if found > converted:
            expected[(sha, position, item)] = found - converted
    kinds: dict[tuple[str, int], set[str]] = {}
    for sha, position, item, *_ in items:
        kinds.setdefault((sha, position), set()).add(item)
    actual: Counter[tuple[str, int, str]] = Counter()
    rows = con.execute(
        "SELECT u.file_sha256, u.unit_position, u.item, u.count FROM ops.unconsumed u "
        "JOIN ops.files f USING (file_sha256) WHERE f.format = 'ccda'"
    ).fetchall()
    for sha, position, item, count in rows:
        if item in DOCUMENT_ITEMS or item.startswith(DOCUMENT_PREFIXES):
            continue
        # A not-consumed entry is counted under its kind, or its kind followed by " (reason)".
        base = [k for k in kinds.get((sha, position), ()) if item == k or item.startswith(f"{k} (")]
        assert base, f"unconsumed {item!r} has no entry kind"
        actual[(sha, position, max(base, key=len))] += count
    assert actual == expected
    documents = {(sha, position) for sha, position, *_ in items}
    return len(documents), sum(row[3] for row in items)
