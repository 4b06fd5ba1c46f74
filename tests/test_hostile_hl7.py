"""HL7 v2 past its documented bounds or with unusable MSH-18 charsets: precise reasons, linear work."""

from __future__ import annotations

import pytest

from pipelines.convert.hl7v2.tokenizer import Hl7ParseError, parse_message
from pipelines.run import run_pipeline
from tests.conftest import ledger


def msh(charset: str = "") -> str:
    fields = [
        "MSH",
        "^~\\&",
        "LAB",
        "FAC",
        "EHR",
        "HOSP",
        "20240131083000",
        "",
        "ORU^R01^ORU_R01",
        "C1",
        "P",
        "2.5.1",
    ]
    if charset:
        fields += ["", "", "", "", "", charset]
    return "|".join(fields)


PID = "PID|1||12345^^^HOSP^MR||Doe^Jane||19800101|F"
OBR = "OBR|1|ORD1|FIL1|24323-8^Panel^LN|||20240131080000+0000"
OBX = "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|||||F|||20240131080000+0000"


def message(*segments: str, charset: str = "") -> bytes:
    return ("\r".join([msh(charset), *segments]) + "\r").encode("latin-1")


def test_a_million_repetitions_is_refused_in_one_linear_pass():
    pid = "PID|1||" + "~".join(f"{i}^^^HOSP^MR" for i in range(1_000_000)) + "||Doe^Jane"
    raw = message(pid, OBR, OBX)
    assert len(raw) > 4_000_000
    with pytest.raises(Hl7ParseError) as exc:
        parse_message(raw)
    assert exc.value.reason == "hl7_message_too_large"
    assert exc.value.message == "PID-3 has more than 1000 repetitions"


def test_tokenizing_many_wrapped_lines_is_linear():
    # 200,000 lines of text wrapped out of one OBX: joined once, not copied per line.
    lines = "\n".join("wrapped note text" for _ in range(200_000))
    raw = message(PID, OBR, "OBX|1|TX|1^Note^L||" + lines)
    parsed = parse_message(raw)
    assert parsed.segments[-1].raw.count("\n") == 199_999


@pytest.mark.parametrize(
    ("segments", "detail"),
    [
        ([PID, OBR, *[OBX] * 5], "the message has more than 4 segments"),
        ([PID + "|" * 10], "a PID segment has more than 12 fields"),
        ([PID, "NTE|1||" + "~" * 3], "NTE-3 has more than 3 repetitions"),
    ],
)
def test_each_bound_is_a_setting_with_its_own_message(segments, detail, monkeypatch):
    monkeypatch.setenv("EHRLIFT_LIMIT_HL7_MAX_SEGMENTS", "4")
    monkeypatch.setenv("EHRLIFT_LIMIT_HL7_MAX_FIELDS", "12")
    monkeypatch.setenv("EHRLIFT_LIMIT_HL7_MAX_REPETITIONS", "3")
    with pytest.raises(Hl7ParseError) as exc:
        parse_message(message(*segments))
    assert (exc.value.reason, exc.value.message) == ("hl7_message_too_large", detail)


def test_message_bytes_bound(monkeypatch):
    monkeypatch.setenv("EHRLIFT_LIMIT_HL7_MAX_MESSAGE_BYTES", "100")
    with pytest.raises(Hl7ParseError) as exc:
        parse_message(message(PID, OBR, OBX))
    assert exc.value.message == "the message is larger than 100 bytes"


@pytest.mark.parametrize(
    "charset", ["hex", "rot13", "base64", "idna", "cp500", "EBCDIC-CP-US", "utf-7", "zlib"]
)
def test_charsets_that_are_no_text_encoding_get_their_own_reason(charset):
    for raw in (
        message(PID, OBR, OBX, charset=charset),
        message(PID + "^M\xfcller", OBR, OBX, charset=charset),
    ):
        with pytest.raises(Hl7ParseError) as exc:
            parse_message(raw)
        assert exc.value.reason == "hl7_unsupported_charset"


def test_an_unknown_charset_name_takes_the_documented_fallback():
    parsed = parse_message(message(PID + "^M\xfcller", OBR, OBX, charset="KLINGON-8"))
    assert parsed.charset == "cp1252"


def test_the_rest_of_the_file_goes_on(tmp_path, make_config, warehouse):
    huge = "PID|1||" + "~".join(f"{i}^^^HOSP^MR" for i in range(5000)) + "||Doe^Jane"
    src = tmp_path / "feed.hl7"
    src.write_bytes(
        message(PID, OBR, OBX)
        + message(huge, OBR, OBX)
        + message(PID, OBR, OBX, charset="cp500")
        + message(PID.replace("12345", "67890"), OBR.replace("1|ORD1|FIL1", "1|ORD2|FIL2"), OBX)
    )
    run = run_pipeline(make_config(src))
    assert [(r[1], r[3], r[4]) for r in ledger(warehouse())] == [
        (1, "converted", None),
        (2, "quarantined", "hl7_message_too_large"),
        (3, "quarantined", "hl7_unsupported_charset"),
        (4, "converted", None),
    ]
    assert run.reconciles
