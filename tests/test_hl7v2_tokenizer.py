"""The HL7 v2 tokenizer: delimiters, fields, escapes, charsets, parse errors, and parity with python-hl7."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.convert.hl7v2.reader import iter_units
from pipelines.convert.hl7v2.tokenizer import HL7_NULL, Delimiters, Hl7ParseError, parse_message

MSH = "MSH|^~\\&|LABAPP|LABFAC|EHR|HOSP|20240131083000+0100||ORU^R01^ORU_R01|CTL123|P|2.5.1"


def msg(*segments: str, msh: str = MSH, eol: str = "\r", encoding: str = "ascii") -> bytes:
    return (eol.join((msh, *segments)) + eol).encode(encoding)


def seg_value(text: str, **kw: int) -> str | None:
    """PID-5 of a message whose PID-5 raw text is text."""
    m = parse_message(msg(f"PID|1||1^^^MRN||{text}"))
    return m.first("PID").get(5, **kw)


def test_header_values() -> None:
    m = parse_message(msg("PID|1||100^^^MRN||DOE^JANE", "OBX|1|NM|GLU||5.5", "OBX|2|NM|NA||140"))
    assert m.delimiters == Delimiters("|", "^", "~", "\\", "&", None)
    assert (m.message_code, m.trigger_event, m.structure) == ("ORU", "R01", "ORU_R01")
    assert (m.version, m.control_id, m.timestamp) == ("2.5.1", "CTL123", "20240131083000+0100")
    assert (m.sending_application, m.sending_facility) == ("LABAPP", "LABFAC")
    assert m.charset == "ascii"
    assert [s.name for s in m.segments] == ["MSH", "PID", "OBX", "OBX"]
    assert [s.position for s in m.segments] == [0, 1, 2, 3]
    assert m.first("PID").position == 1
    assert [s.get(1) for s in m.all("OBX")] == ["1", "2"]
    assert m.first("ZZZ") is None and m.all("ZZZ") == []


def test_msh_field_numbering() -> None:
    m = parse_message(msg("PID|1"))
    msh = m.first("MSH")
    assert msh.field(1).value() == "|" and msh.get(1) == "|"
    assert msh.field(2).value() == "^~\\&" and msh.get(2) == "^~\\&"
    assert msh.field(2).repetitions[0].component(1) == "^~\\&"
    assert msh.get(3) == "LABAPP"
    assert msh.get(9, 2) == "R01"
    assert msh.field_count == 12


def test_missing_and_empty_fields() -> None:
    pid = parse_message(msg("PID|1||100||")).first("PID")
    assert pid.field_count == 5
    for n in (2, 5, 6, 99):
        f = pid.field(n)
        assert not f and f.repetitions == [] and f.value() is None and f.raw == ""
        assert pid.get(n) is None
    assert pid.get(3, 2) is None and pid.get(3, 1, 2) is None and pid.get(3, repetition=2) is None


def test_components_subcomponents_repetitions() -> None:
    pid = parse_message(msg("PID|1||100^^^HOSP&1.2.3&ISO^MR~200^^^CLINIC^PI||DOE^JANE^Q")).first("PID")
    f = pid.field(3)
    assert f.raw == "100^^^HOSP&1.2.3&ISO^MR~200^^^CLINIC^PI"
    reps = f.repetitions
    assert len(reps) == 2
    assert reps[0].components == ["100", None, None, "HOSP", "MR"]
    assert reps[0].component(4) == "HOSP"
    assert reps[0].subcomponents(4) == ["HOSP", "1.2.3", "ISO"]
    assert reps[0].subcomponents(2) == [] and reps[0].component(9) is None
    assert reps[1].component(5) == "PI"
    assert f.value() == "100" and f.value(4, 2) == "1.2.3" and f.value(4, 4) is None
    assert pid.get(3, 4, 3) == "ISO"
    assert pid.get(3, 1, repetition=2) == "200"
    assert pid.get(3, 1, repetition=3) is None
    assert pid.get(5, 2) == "JANE"


def test_explicit_null() -> None:
    pid = parse_message(msg('PID|1||100||""|^""')).first("PID")
    assert pid.get(5) == HL7_NULL == '""'
    assert pid.field(5).value() == HL7_NULL
    assert pid.get(6, 2) == HL7_NULL and pid.get(6) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A\\F\\B", "A|B"),
        ("A\\S\\B", "A^B"),
        ("A\\T\\B", "A&B"),
        ("A\\R\\B", "A~B"),
        ("A\\E\\B", "A\\B"),
        ("A\\P\\B", "A#B"),
        ("\\X414243\\", "ABC"),
        ("one\\.br\\two", "one\ntwo"),
        ("\\H\\bold\\N\\ plain", "bold plain"),
        ("a\\.sp\\b", "a\nb"),
        ("a\\.sp3\\b", "a\n\n\nb"),
        ("a\\.sk2\\b", "a  b"),
        ("a\\.in+4\\b", "a    b"),
        ("a\\.ti2\\b", "a  b"),
        ("a\\.in-2\\b", "ab"),
        ("a\\.ce\\b", "a\nb"),
        ("a\\.fi\\b\\.nf\\c", "abc"),
        ("\\C2842\\x", "\\C2842\\x"),
        ("\\M2442\\x", "\\M2442\\x"),
        ("\\Zab\\x", "\\Zab\\x"),
        ("C:\\path\\f", "C:\\path\\f"),
        ("lone \\ escape", "lone \\ escape"),
        ("\\XZZ\\", "\\XZZ\\"),
    ],
)
def test_escape_sequences(raw: str, expected: str) -> None:
    assert seg_value(raw) == expected


def test_escaped_delimiters_do_not_split() -> None:
    pid = parse_message(msg("PID|1||1||SMITH\\S\\JONES^ANN\\T\\MARIE")).first("PID")
    assert pid.get(5) == "SMITH^JONES"
    assert pid.get(5, 2) == "ANN&MARIE"
    assert pid.field(5).raw == "SMITH\\S\\JONES^ANN\\T\\MARIE"


def test_truncation_character_v27() -> None:
    m = parse_message(msg("PID|1||1||A\\P\\B", msh="MSH|^~\\&#|A|B|C|D|20240101||ADT^A01^ADT_A01|C1|P|2.7"))
    assert m.delimiters == Delimiters("|", "^", "~", "\\", "&", "#")
    assert m.first("PID").get(5) == "A#B"
    assert m.first("MSH").get(2) == "^~\\&#"


def test_non_standard_delimiters() -> None:
    raw = msg("PID#1##100$$$MRN%200#A*F*B$C@D", msh="MSH#$%*@#APP#FAC#R#RF#20240101##ADT$A01#C9#P#2.4")
    m = parse_message(raw)
    assert m.delimiters == Delimiters("#", "$", "%", "*", "@", None)
    assert (m.message_code, m.trigger_event, m.control_id) == ("ADT", "A01", "C9")
    pid = m.first("PID")
    assert pid.get(3, 4) == "MRN" and pid.get(3, repetition=2) == "200"
    assert pid.get(4) == "A#B" and pid.get(4, 2, 2) == "D"


def test_three_encoding_characters_from_old_senders() -> None:
    m = parse_message(msg("PID|1||1&2||X\\Y", msh="MSH|^~}|A|B|C|D|1993||BAR^P01|C1|P|2.1"))
    assert m.delimiters == Delimiters("|", "^", "~", None, "}", None)
    assert m.first("PID").get(5) == "X\\Y"


def test_wrapped_text_joins_previous_segment() -> None:
    m = parse_message(msg("OBX|1|TX|N||first line", "second line", "", "after blank|F", "NTE|1", eol="\n"))
    assert [s.name for s in m.segments] == ["MSH", "OBX", "NTE"]
    obx = m.first("OBX")
    assert obx.get(5) == "first line\nsecond line\n\nafter blank"
    assert obx.get(6) == "F"


@pytest.mark.parametrize("eol", ["\r", "\n", "\r\n"])
def test_terminators(eol: str) -> None:
    m = parse_message(msg("PID|1||1", "PV1|1|I", eol=eol))
    assert [s.name for s in m.segments] == ["MSH", "PID", "PV1"]
    assert m.first("PV1").get(2) == "I"


def test_leading_bom_and_whitespace() -> None:
    m = parse_message(b"\xef\xbb\xbf\r\n" + msg("PID|1"))
    assert m.message_code == "ORU"


def test_latin1_declared() -> None:
    raw = msg("PID|1||1||M\xfcller^J\\XFC\\rgen", msh=MSH + "||||||8859/1", encoding="latin-1")
    m = parse_message(raw)
    assert m.charset == "iso8859-1"
    assert m.first("PID").get(5) == "Müller"
    assert m.first("PID").get(5, 2) == "Jürgen"


@pytest.mark.parametrize(
    ("declared", "encoding", "charset", "text"),
    [
        ("UNICODE UTF-8", "utf-8", "utf-8", "Grüße€"),
        ("UTF8", "utf-8", "utf-8", "Grüße€"),
        ("ISO-8859-1", "latin-1", "iso8859-1", "Grüße"),
        ("8859/15", "iso8859-15", "iso8859-15", "Grüße€"),
        ("", "utf-8", "utf-8", "Grüße€"),
        ("", "cp1252", "cp1252", "Grüße€"),
        ("ASCII", "cp1252", "cp1252", "Grüße€"),
        ("ASCII", "ascii", "ascii", "Gruesse"),
    ],
)
def test_declared_charsets(declared: str, encoding: str, charset: str, text: str) -> None:
    raw = msg(f"PID|1||1||{text}", msh=MSH + "||||||" + declared, encoding=encoding)
    m = parse_message(raw)
    assert m.charset == charset
    assert m.first("PID").get(5) == text


def test_undecodable_in_declared_charset_falls_back_honestly() -> None:
    raw = msg("PID|1||1||Caf\xe9", msh=MSH + "||||||UNICODE UTF-8", encoding="cp1252")
    m = parse_message(raw)
    assert m.charset == "cp1252"
    assert m.first("PID").get(5) == "Café"
    assert parse_message(raw, default_charset="latin-1").charset == "iso8859-1"


def test_undecodable_everywhere() -> None:
    raw = msg("PID|1||1||X", msh=MSH + "||||||UNICODE UTF-8").replace(b"|X", b"|\x81\x8d")
    with pytest.raises(Hl7ParseError) as exc:
        parse_message(raw)
    assert exc.value.reason == "hl7_invalid_encoding"


def test_utf16_rejected() -> None:
    with pytest.raises(Hl7ParseError) as exc:
        parse_message(msg("PID|1", msh=MSH + "||||||UNICODE UTF-16"))
    assert exc.value.reason == "hl7_invalid_encoding"
    with pytest.raises(Hl7ParseError) as exc:
        parse_message(msg("PID|1").decode().encode("utf-16"))
    assert exc.value.reason == "hl7_invalid_encoding"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"PID|1||SECRETID\rMSH|^~\\&|A\r", "hl7_missing_msh"),
        (b"", "hl7_missing_msh"),
        (b"MSH\rPID|1||SECRETID\r", "hl7_malformed_msh"),
        (b"MSH|^~\\&|A|B|C|D|20240101\rPID|1||SECRETID\r", "hl7_malformed_msh"),
        (b"MSH|^~\\&|A|B|C|D|20240101||^X|C1|P|2.5\rPID|1||SECRETID\r", "hl7_malformed_msh"),
        (b"MSH|^^\\&|A|B|C|D|1||ADT^A01|C|P|2.5\rPID|1||SECRETID\r", "hl7_bad_delimiters"),
        (b"MSH|^~|A|B|C|D|1||ADT^A01|C|P|2.5\rPID|1||SECRETID\r", "hl7_bad_delimiters"),
        (b"MSH|^|A|B|C|D|1||ADT^A01|C|P|2.5\rPID|1||SECRETID\r", "hl7_bad_delimiters"),
        (b"MSHA^~\\&A\rPID|1||SECRETID\r", "hl7_bad_delimiters"),
        (b"MSH|^~\\&!$%|A|B|C|D|1||ADT^A01|C|P|2.5\rPID|1||SECRETID\r", "hl7_bad_delimiters"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|C|P|2.5\r", "hl7_truncated"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|C|P|2.5\rPID|1||SECRETID\rPV", "hl7_truncated"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|C|P|2.5\rPID|1||SECRET\x00ID\r", "hl7_binary_junk"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|C|P|2.5\rPID|1||SECRET\x1bID\x07\r", "hl7_binary_junk"),
    ],
)
def test_parse_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(Hl7ParseError) as exc:
        parse_message(raw)
    assert exc.value.reason == reason
    assert "SECRET" not in exc.value.message and "SECRET" not in str(exc.value)


def test_wrapped_text_ending_without_terminator_is_not_truncated() -> None:
    m = parse_message(b"MSH|^~\\&|A|B|C|D|1||ORU^R01|C|P|2.5\rOBX|1|TX|N||see\nbelow text")
    assert m.first("OBX").get(5) == "see\nbelow text"


def test_old_versions_leniently() -> None:
    m = parse_message(b"MSH|^~\\&|A|B|C|D|19930502||ADT|C1|P|2.1\rEVN|A04|1993\rPID|1||100\r")
    assert (m.message_code, m.trigger_event, m.structure, m.version) == ("ADT", None, None, "2.1")


def _corpus() -> Path:
    root = Path(
        os.environ.get("EHRLIFT_CORPUS", Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus")
    )
    return root / "hl7v2"


@pytest.mark.corpus
def test_corpus_parity_with_python_hl7() -> None:
    import hl7

    root = _corpus()
    if not root.is_dir():
        pytest.skip(f"HL7 v2 corpus not found at {root} (set EHRLIFT_CORPUS)")
    both = same = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        for unit in iter_units(path):
            if unit.kind != "hl7_message":
                continue
            try:
                ours = parse_message(unit.data)
            except Hl7ParseError:
                ours = None  # a reason code, not an exception escaping: allowed
            text = unit.data.decode("latin-1").replace("\r\n", "\r").replace("\n", "\r")
            try:
                theirs = hl7.parse(text)
                their_msh = (str(theirs[0][9]), str(theirs[0][10]))
            except Exception:
                continue
            both += 1
            if ours is None:
                continue
            msh = ours.first("MSH")
            if len(theirs) == len(ours.segments) and their_msh == (msh.field(9).raw, msh.field(10).raw):
                same += 1
    assert both > 300
    assert same / both >= 0.95, f"{same} of {both} messages agree with python-hl7"


def test_required_fields_missing() -> None:
    from pipelines.convert.hl7v2.validate import required_fields_missing

    ok = parse_message(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|C1|P|2.5\rPID|1||100\r")
    assert required_fields_missing(ok) == []
    bad = parse_message(b'MSH|^~\\&|A|B|C|D|1||ADT^A01||P|2.5\rPID|1||""\r')
    assert required_fields_missing(bad) == ["MSH-10", "PID-3"]
    no_pid = parse_message(b"MSH|^~\\&|A|B|C|D|1||VXU^V04|C1|P|2.5\rORC|RE\r")
    assert required_fields_missing(no_pid) == ["PID"]


def test_explain_invalid_names_places_not_values() -> None:
    from pipelines.convert.hl7v2.validate import explain_invalid

    raw = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|C1|P|2.5\rEVN|A01|2024\rPID|1||SECRET||X^Y\rPV1|1|I\rMSA|AA|SECRET\r"
    reason, text = explain_invalid(raw, parse_message(raw))
    assert (reason, text) == ("hl7_structure_invalid", "ADT^A01 v2.5: segment MSA not allowed at position 5")
    assert explain_invalid(b"PID|1||SECRET\r", None) == (
        "hl7_missing_msh",
        "the message does not start with an MSH segment",
    )
    unknown = b"MSH|^~\\&|A|B|C|D|1||ZZZ^Z01|C1|P|9.9\rPID|1||SECRET\r"
    reason, text = explain_invalid(unknown, None)
    assert reason is None and "SECRET" not in text


@pytest.mark.corpus
def test_corpus_no_exception_escapes() -> None:
    root = _corpus()
    if not root.is_dir():
        pytest.skip(f"HL7 v2 corpus not found at {root} (set EHRLIFT_CORPUS)")
    parsed = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        for unit in iter_units(path):
            try:
                m = parse_message(unit.data)
            except Hl7ParseError as exc:
                assert exc.reason.startswith("hl7_")
                continue
            parsed += 1
            for seg in m.segments:
                for n in range(1, seg.field_count + 1):
                    for rep in seg.field(n).repetitions:
                        rep.components
    assert parsed > 300
