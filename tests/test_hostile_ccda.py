"""Real C-CDA attachments (12-50 MB of base64) parse and are kept; the size and depth bounds still hold."""

from __future__ import annotations

import base64
import os

import orjson
import pytest

from pipelines.convert.ccda import parse
from pipelines.convert.ccda.parse import CcdaRejected, parse_xml
from pipelines.run import run_pipeline
from tests.conftest import ledger
from tests.hostile import run_bounded
from tests.test_ccda import HEAD, HEADER, by_type, convert

UNSTRUCTURED = HEADER.replace("2.16.840.1.113883.10.20.22.1.2", "2.16.840.1.113883.10.20.22.1.10")


def b64(size: int) -> str:
    """size characters of base64, wrapped at 76 as exporters write it."""
    text = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    return "\n".join(text[i : i + 76] for i in range(0, len(text), 76))


def with_pdf_body(data: str) -> bytes:
    body = f'<nonXMLBody><text mediaType="application/pdf" representation="B64">{data}</text></nonXMLBody>'
    return f"{HEAD}{UNSTRUCTURED}<component>{body}</component></ClinicalDocument>".encode()


def with_media(data: str, media_type: str) -> bytes:
    media = (
        f'<entry><observationMedia classCode="OBS" moodCode="EVN" ID="m1">'
        f'<value mediaType="{media_type}" representation="B64">{data}</value></observationMedia></entry>'
    )
    section = (
        '<component><section><code code="29545-1" codeSystem="2.16.840.1.113883.6.1"/><title>Exam</title>'
        '<text><renderMultiMedia referencedObject="m1"><caption>scan</caption></renderMultiMedia></text>'
        f"{media}</section></component>"
    )
    body = f"<component><structuredBody>{section}</structuredBody></component>"
    return f"{HEAD}{HEADER}{body}</ClinicalDocument>".encode()


def test_a_12_mb_pdf_body_is_kept_whole_as_document_reference_content():
    data = b64(12_000_000)
    resources, _, _ = convert(with_pdf_body(data))
    (ref,) = by_type(resources, "DocumentReference")
    attachment = ref["content"][1]["attachment"]
    assert attachment["contentType"] == "application/pdf"
    assert attachment["data"] == "".join(data.split())


@pytest.mark.parametrize("media_type", ["application/pdf", "image/png"])
def test_a_12_mb_observation_media_is_kept_as_an_attachment(media_type):
    data = b64(12_000_000)
    resources, _, _ = convert(with_media(data, media_type))
    (ref,) = by_type(resources, "DocumentReference")
    assert ref["content"][1]["attachment"] == {
        "contentType": media_type,
        "data": "".join(data.split()),
        "title": "m1",
    }


def test_huge_tree_keeps_the_nesting_bound():
    deep = "<a>" * 300 + "</a>" * 300
    with pytest.raises(CcdaRejected) as exc:
        parse_xml(
            with_pdf_body(b64(11_000_000) + "</text></nonXMLBody><x>" + deep + "</x><nonXMLBody><text>")
        )
    assert (exc.value.reason, exc.value.message) == (
        "xml_not_well_formed",
        "XML nests deeper than 256 elements",
    )
    with pytest.raises(CcdaRejected) as exc:
        parse_xml(with_pdf_body(b64(11_000_000)).replace(b"<nonXMLBody>", b"<nonXMLBody>" + deep.encode()))
    assert (exc.value.reason, exc.value.message) == (
        "xml_not_well_formed",
        "XML nests deeper than 256 elements",
    )


def test_huge_tree_keeps_entities_unresolved():
    data = with_pdf_body(b64(11_000_000) + "&secret;")
    with pytest.raises(CcdaRejected) as exc:
        parse_xml(data)
    assert exc.value.reason == "xml_not_well_formed"


def test_over_the_bound_is_quarantined_unread(tmp_path, make_config, warehouse, monkeypatch):
    monkeypatch.setattr(parse, "MAX_BYTES", 4096)
    src = tmp_path / "big.xml"
    src.write_bytes(with_pdf_body(b64(8000)))
    run_pipeline(make_config(src))
    con = warehouse()
    assert ledger(con) == [("big.xml", 1, "ccda_document", "quarantined", "ccda_too_large", 0)]
    (message,) = con.execute("SELECT message FROM ops.quarantine").fetchone()
    assert message == f"document of {src.stat().st_size} bytes exceeds the 4096 byte bound"


def test_a_50_mb_attachment_converts_in_bounded_memory(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "scan.xml").write_bytes(with_pdf_body(b64(50_000_000)))
    warehouse = tmp_path / "w" / "w.duckdb"
    # Under a 3 GB address-space cap: before pipelines.entry.fit_address_space the run reserved 4.2 GB
    # (malloc arenas, Arrow's pool) for 700 MB resident, and orjson crashed on a failed allocation.
    proc, peak = run_bounded(
        ["run", str(src), "--warehouse", str(warehouse), "--no-progress"], memory=3 << 30
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert 0 < peak < 1 << 30
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        (doc,) = con.execute('SELECT resource::VARCHAR FROM fhir."DocumentReference"').fetchone()
    finally:
        con.close()
    assert len(orjson.loads(doc)["content"][1]["attachment"]["data"]) > 49_000_000
