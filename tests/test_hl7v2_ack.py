"""HL7 v2 ACKs: addressing, codes, control ids, ERR per version, and AR for unparseable input."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipelines.convert.hl7v2.ack import build_ack
from pipelines.convert.hl7v2.tokenizer import parse_message

NOW = datetime(2024, 2, 1, 9, 30, 0, tzinfo=UTC)
RAW = b"MSH|^~\\&|LABAPP|LABFAC|EHR|HOSP|20240131083000||ORU^R01^ORU_R01|CTL123|P|2.5.1\rPID|1||100\r"


def segments(ack: bytes) -> list[str]:
    assert ack.endswith(b"\r") and b"\n" not in ack
    return ack.decode().split("\r")[:-1]


def test_aa() -> None:
    ack = build_ack(parse_message(RAW), RAW, "AA", control_id="ACK1", now=NOW)
    assert segments(ack) == [
        "MSH|^~\\&|EHR|HOSP|LABAPP|LABFAC|20240201093000||ACK^R01^ACK|ACK1|P|2.5.1",
        "MSA|AA|CTL123",
    ]


def test_ae_with_text_is_escaped() -> None:
    ack = build_ack(parse_message(RAW), RAW, "AE", "bad|value^here", control_id="ACK2", now=NOW)
    assert segments(ack)[1:] == [
        "MSA|AE|CTL123|bad\\F\\value\\S\\here",
        "ERR|||207^Application internal error^HL70357|E||||bad\\F\\value\\S\\here",
    ]


def test_ar_pre_v25_uses_err1() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X9|T|2.3\rPID|1||100\r"
    ack = build_ack(parse_message(raw), raw, "AR", error_code="101", control_id="N1", now=NOW)
    assert segments(ack) == [
        "MSH|^~\\&|C|D|A|B|20240201093000||ACK^A01|N1|T|2.3",
        "MSA|AR|X9",
        "ERR|^^^101&Required field missing&HL70357",
    ]


def test_v27_drops_msa3_and_keeps_delimiters() -> None:
    raw = b"MSH#$%*@#A#B#C#D#20240101##ADT$A04#X1#P#2.7\rPID#1##1\r"
    ack = build_ack(parse_message(raw), raw, "AE", "x#y", control_id="N2", now=NOW)
    assert segments(ack) == [
        "MSH#$%*@#C#D#A#B#20240201093000##ACK$A04$ACK#N2#P#2.7",
        "MSA#AE#X1",
        "ERR###207$Application internal error$HL70357#E####x*F*y",
    ]


def test_unparseable_input_gets_ar() -> None:
    raw = b"junk MSH|^~\\&|A|B|C|D|x||ORU^R01|77|P|2.4\rPID|1\x00\r"
    ack = build_ack(None, raw, "AR", control_id="N3", now=NOW)
    segs = segments(ack)
    assert segs[0] == "MSH|^~\\&|C|D|A|B|20240201093000||ACK^R01^ACK|N3|P|2.5.1"
    assert segs[1] == "MSA|AR|77"
    assert segs[2].startswith("ERR|||207^")
    ack = build_ack(None, b"\x00\x01 not hl7 at all", "AR", control_id="N4", now=NOW)
    assert segments(ack)[1] == "MSA|AR|"


def test_new_control_id_and_charset_echoed() -> None:
    raw = RAW.replace(b"|2.5.1\r", b"|2.5.1||||||8859/1\r")
    a1 = build_ack(parse_message(raw), raw, "AA")
    a2 = build_ack(parse_message(raw), raw, "AA")
    id1, id2 = segments(a1)[0].split("|")[9], segments(a2)[0].split("|")[9]
    assert id1 != id2 and id1 != "CTL123" and 0 < len(id1) <= 20
    assert segments(a1)[0].endswith("|2.5.1||||||8859/1")


def test_bad_code_rejected() -> None:
    with pytest.raises(ValueError):
        build_ack(None, RAW, "OK")


def test_hl7apy_reads_the_ack() -> None:
    from hl7apy.parser import parse_message as hl7apy_parse

    ack = build_ack(parse_message(RAW), RAW, "AE", "oops", control_id="ACK3", now=NOW)
    tree = hl7apy_parse(ack.decode(), find_groups=False)
    assert tree.msh.msh_9.to_er7() == "ACK^R01^ACK"
    assert tree.msa.msa_2.to_er7() == "CTL123"


def test_err_location_per_version() -> None:
    ack = build_ack(parse_message(RAW), RAW, "AR", error_code="101", location=("MSH", 1, 10), now=NOW)
    assert segments(ack)[2] == "ERR||MSH^1^10|101^Required field missing^HL70357|E"
    raw = RAW.replace(b"|2.5.1\r", b"|2.3\r")
    ack = build_ack(parse_message(raw), raw, "AR", error_code="101", location=("MSH", 1, 9), now=NOW)
    assert segments(ack)[2] == "ERR|MSH^1^9^101&Required field missing&HL70357"


HL7APY_VERSIONS = ("2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2")


@pytest.mark.parametrize("version", HL7APY_VERSIONS)
@pytest.mark.parametrize("code", ["AA", "AE", "AR"])
def test_every_ack_is_a_valid_ack_of_the_inbound_version(version: str, code: str) -> None:
    """hl7apy knows each version's ACK structure, MSA and ERR: it validates what the listener sends.
    (It builds ACKs at ~100/s against the tokenizer's tens of thousands, so it checks, not builds.)"""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message as Hl7apyMessage
    from hl7apy.parser import parse_segments

    raw = f"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X9|P|{version}\rPID|1||100\r".encode()
    ack = build_ack(parse_message(raw), raw, code, "bad|value", error_code="101", location=("PID", 1, 3))
    tree = Hl7apyMessage("ACK", version=version, validation_level=VALIDATION_LEVEL.STRICT)
    tree.children = parse_segments(
        ack.decode().rstrip("\r"), version=version, validation_level=VALIDATION_LEVEL.STRICT
    )
    assert tree.validate()
    assert [s.name for s in tree.children] == ["MSH", "MSA"] + (["ERR"] if code != "AA" else [])
    assert tree.msa.msa_1.to_er7() == code and tree.msa.msa_2.to_er7() == "X9"


def test_hl7apy_validation_catches_a_broken_ack() -> None:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message as Hl7apyMessage
    from hl7apy.exceptions import ValidationError
    from hl7apy.parser import parse_segments

    tree = Hl7apyMessage("ACK", version="2.5", validation_level=VALIDATION_LEVEL.STRICT)
    tree.children = parse_segments(
        "MSH|^~\\&|A|B|C|D|20240101||ACK^A01^ACK|1|P|2.5\rERR|||207",
        version="2.5",
        validation_level=VALIDATION_LEVEL.STRICT,
    )
    with pytest.raises(ValidationError):
        tree.validate()
