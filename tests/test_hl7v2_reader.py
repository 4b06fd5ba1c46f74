"""The HL7 v2 reader: units, kinds and exact byte ranges for every framing and terminator variant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.convert.hl7v2.reader import RawUnit, iter_units

MSG_A = [b"MSH|^~\\&|LAB|FAC|EHR|FAC|20240101120000||ADT^A01|A1|P|2.5.1", b"PID|1||100^^^MRN||DOE^JANE"]
MSG_B = [b"MSH|^~\\&|LAB|FAC|EHR|FAC|20240101120100||ORU^R01|B2|P|2.5.1", b"OBX|1|TX|X||note"]
GAP_BYTES = b" \t\r\n\x0b\x1c\x0c"


def units(tmp_path: Path, data: bytes, chunk_size: int = 1 << 20) -> list[RawUnit]:
    path = tmp_path / "in.hl7"
    path.write_bytes(data)
    return list(iter_units(path, chunk_size))


def summary(us: list[RawUnit]) -> list[tuple[int, str, int, int]]:
    return [(u.position, u.kind, u.byte_offset, u.byte_length) for u in us]


def assert_exact(data: bytes, us: list[RawUnit]) -> None:
    """Every unit is file[off:off+len]; units do not overlap; what no unit covers is whitespace/framing."""
    covered = bytearray(len(data))
    for u in us:
        assert data[u.byte_offset : u.byte_offset + u.byte_length] == u.data
        assert not any(covered[u.byte_offset : u.byte_offset + u.byte_length])
        covered[u.byte_offset : u.byte_offset + u.byte_length] = b"\x01" * u.byte_length
    gaps = bytes(b for b, c in zip(data, covered, strict=True) if not c)
    assert gaps.lstrip(b"\xef\xbb\xbf").translate(None, GAP_BYTES) == b""
    assert [u.position for u in us] == list(range(1, len(us) + 1))


@pytest.mark.parametrize("eol", [b"\r", b"\n", b"\r\n"])
def test_single_message_each_terminator(tmp_path: Path, eol: bytes) -> None:
    data = eol.join(MSG_A) + eol
    us = units(tmp_path, data)
    assert summary(us) == [(1, "hl7_message", 0, len(data))]
    assert us[0].data == data


def test_no_final_terminator_and_trailing_blank_lines(tmp_path: Path) -> None:
    body = b"\r".join(MSG_A)
    assert summary(units(tmp_path, body)) == [(1, "hl7_message", 0, len(body))]
    data = body + b"\r\n\r\n  \n"
    us = units(tmp_path, data)
    assert summary(us) == [(1, "hl7_message", 0, len(body) + 2)]
    assert_exact(data, us)


def test_mixed_terminators_and_multiple_messages(tmp_path: Path) -> None:
    a = MSG_A[0] + b"\r\n" + MSG_A[1] + b"\n"
    b = MSG_B[0] + b"\r" + MSG_B[1] + b"\r\n"
    data = a + b"\n" + b
    us = units(tmp_path, data)
    assert summary(us) == [
        (1, "hl7_message", 0, len(a)),
        (2, "hl7_message", len(a) + 1, len(b)),
    ]
    assert_exact(data, us)


def test_batch_envelopes(tmp_path: Path) -> None:
    fhs = b"FHS|^~\\&|LAB|FAC\r"
    bhs = b"BHS|^~\\&|LAB|FAC\r"
    a = b"\r".join(MSG_A) + b"\r"
    b = b"\r".join(MSG_B) + b"\r"
    bts, fts = b"BTS|2\r", b"FTS|1\r"
    data = fhs + bhs + a + b + bts + fts
    us = units(tmp_path, data)
    assert [u.kind for u in us] == [
        "hl7_batch_envelope",
        "hl7_batch_envelope",
        "hl7_message",
        "hl7_message",
        "hl7_batch_envelope",
        "hl7_batch_envelope",
    ]
    assert [u.data for u in us] == [fhs, bhs, a, b, bts, fts]
    assert_exact(data, us)


def test_mllp_frames(tmp_path: Path) -> None:
    a = b"\r".join(MSG_A) + b"\r"
    b = b"\r".join(MSG_B) + b"\r"
    data = b"\x0b" + a + b"\x1c\r" + b"\x0b" + b + b"\x1c\r"
    us = units(tmp_path, data)
    assert summary(us) == [(1, "hl7_message", 1, len(a)), (2, "hl7_message", len(a) + 4, len(b))]
    assert [u.data for u in us] == [a, b]
    assert_exact(data, us)


def test_mllp_frames_with_newlines_and_junk_between(tmp_path: Path) -> None:
    a = b"\r".join(MSG_A) + b"\r"
    b = b"\r".join(MSG_B) + b"\r"
    data = b"\x0b" + a + b"\x1c\r\n" + b"noise\n" + b"\x0b" + b + b"\x1c\r\n"
    us = units(tmp_path, data)
    assert [u.kind for u in us] == ["hl7_message", "hl7_fragment", "hl7_message"]
    assert us[1].data == b"noise\n"
    assert us[2].data == b
    assert_exact(data, us)


def test_utf8_bom(tmp_path: Path) -> None:
    body = b"\r".join(MSG_A) + b"\r"
    data = b"\xef\xbb\xbf" + body
    us = units(tmp_path, data)
    assert summary(us) == [(1, "hl7_message", 3, len(body))]
    assert us[0].data == body


def test_junk_before_first_msh_and_stray_segment(tmp_path: Path) -> None:
    junk = b"exported 2024-01-01 by spooler\r\n"
    msg = b"\r".join(MSG_A) + b"\r"
    stray = b"PID|1||200\r"
    data = junk + msg + b"BTS|1\r" + stray
    us = units(tmp_path, data)
    assert [(u.kind, u.data) for u in us] == [
        ("hl7_fragment", junk),
        ("hl7_message", msg),
        ("hl7_batch_envelope", b"BTS|1\r"),
        ("hl7_fragment", stray),
    ]
    assert_exact(data, us)


def test_whitespace_only_file_has_no_units(tmp_path: Path) -> None:
    assert units(tmp_path, b"\r\n  \n\t\r") == []
    assert units(tmp_path, b"") == []


def test_marker_prefix_before_msh_is_a_fragment(tmp_path: Path) -> None:
    msg = b"\r".join(MSG_A) + b"[EOM]\r\n"
    data = b"[SOM]" + msg
    us = units(tmp_path, data)
    assert summary(us) == [(1, "hl7_fragment", 0, 5), (2, "hl7_message", 5, len(msg))]


def test_wrapped_text_lines_stay_in_their_message(tmp_path: Path) -> None:
    data = MSG_B[0] + b"\nOBX|1|TX|X||first line\nsecond line\n  indented\n\nafter blank|F\n"
    us = units(tmp_path, data)
    assert summary(us) == [(1, "hl7_message", 0, len(data))]


def test_field_separator_other_than_pipe(tmp_path: Path) -> None:
    data = b"MSH#^~\\&#LAB#FAC#EHR#FAC#20240101##ADT^A01#C3#P#2.5\rPID#1##300\rFOO|not a segment here\r"
    us = units(tmp_path, data)
    assert summary(us) == [(1, "hl7_message", 0, len(data))]


def test_binary_junk_after_message_is_set_apart(tmp_path: Path) -> None:
    msg = b"\r".join(MSG_A) + b"\r"
    data = msg + b"\x00\x00\x00\x00\r" + b"\r".join(MSG_B)
    us = units(tmp_path, data)
    assert [u.kind for u in us] == ["hl7_message", "hl7_fragment", "hl7_message"]
    assert us[0].data == msg
    assert_exact(data, us)


def test_unterminated_mllp_frame_at_end(tmp_path: Path) -> None:
    body = b"\r".join(MSG_A)
    data = b"\x0b" + body
    us = units(tmp_path, data)
    assert summary(us) == [(1, "hl7_message", 1, len(body))]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64])
def test_chunk_boundaries_do_not_change_units(tmp_path: Path, chunk_size: int) -> None:
    a = b"\r\n".join(MSG_A) + b"\r\n"
    b = b"\r".join(MSG_B) + b"\r"
    data = b"\xef\xbb\xbfjunk\r\n" + b"\x0b" + a + b"\x1c\r" + b"\n\x0b" + b + b"\x1c\r" + b"FTS|1"
    expected = summary(units(tmp_path, data))
    assert summary(units(tmp_path, data, chunk_size)) == expected
    assert [u.kind for u in units(tmp_path, data, chunk_size)] == [
        "hl7_fragment",
        "hl7_message",
        "hl7_message",
        "hl7_batch_envelope",
    ]
    assert_exact(data, units(tmp_path, data, chunk_size))


def test_large_file_streams(tmp_path: Path) -> None:
    msg = b"\r".join(MSG_A) + b"\r"
    data = msg * 5000
    us = units(tmp_path, data, chunk_size=4096)
    assert len(us) == 5000
    assert us[-1].byte_offset == len(msg) * 4999
    assert all(u.data == msg for u in us)


def _corpus() -> Path:
    root = Path(
        os.environ.get("EHRLIFT_CORPUS", Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus")
    )
    return root / "hl7v2"


@pytest.mark.corpus
def test_corpus_units_cover_every_file_exactly() -> None:
    root = _corpus()
    if not root.is_dir():
        pytest.skip(f"HL7 v2 corpus not found at {root} (set EHRLIFT_CORPUS)")
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    assert files
    messages = 0
    for path in files:
        data = path.read_bytes()
        us = list(iter_units(path))
        assert_exact(data, us)
        gaps = len(data) - sum(u.byte_length for u in us)
        assert gaps >= 0
        messages += sum(u.kind == "hl7_message" for u in us)
    assert messages > 300
