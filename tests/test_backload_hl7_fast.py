"""The HL7 back-load's fast paths agree with the general ones: the usual ACK read from its MSA line, segments
joined from fields in any order, the structural check on built segments (placeholder control id), and the
ACK timeout as one watchdog per send."""

from __future__ import annotations

import asyncio
import logging

import duckdb
import pytest

from pipelines.backload.hl7 import mllp
from pipelines.backload.hl7.encode import segment
from pipelines.backload.hl7.mllp import Item, SendPolicy, read_ack, send_all
from pipelines.backload.hl7.plan import build_plan
from pipelines.backload.hl7.segments import Header
from pipelines.backload.hl7.structure import check, check_segments, control_id_fits
from tests.backload_builders import build_warehouse
from tests.hl7_peer import Peer
from tests.hl7back_builders import resources

ACKS = [
    b"MSH|^~\\&|R|R|S|S|20250101||ACK|A|P|2.5.1\rMSA|AA|C1",
    b"MSH|^~\\&|R|R|S|S|20250101||ACK|A|P|2.5.1\rMSA|AA|C1\r",
    b"MSH|^~\\&|R|R|S|S|20250101||ACK|A|P|2.5.1\r\nMSA|CA|C2\r\n",
    b"MSH|^~\\&|R|R|S|S|20250101||ACK|A|P|2.5.1\nMSA| AA |C3|text\n",
    b"MSH|^~\\&|R|R|S|S|20250101||ACK|A|P|2.5.1\rMSA|AA",  # no MSA-2: the full reader decides
    b"MSH|^~\\&|R|R|S|S|20250101||ACK|A|P|2.5.1\rMSA|AE|C4\rERR|||207^Error^HL70357|E",
    b"MSH|^~\\&|R|R|S|S|20250101||ACK|A|P|2.5.1\rMSA|AA|C5\rMSA|AR|C6",  # two MSA: the last counts
    b"MSH|^~\\&|R|R|S|S|20250101||ACK|A|P|2.5.1|MSA|AA|C7",  # MSA| inside a field, not a segment
    b"",
]


@pytest.mark.parametrize("block", ACKS)
def test_the_usual_ack_is_read_as_the_full_reader_reads_it(block):
    assert read_ack(block) == mllp._read_ack(block)


def test_reading_the_usual_ack():
    assert read_ack(ACKS[1]) == ("AA", "C1", [])
    assert read_ack(ACKS[3]) == ("AA", "C3", [])
    assert read_ack(ACKS[6]) == ("AR", "C6", [])
    assert read_ack(ACKS[7]) == (None, None, [])


def test_segment_fields_in_any_order():
    assert segment("OBX", {1: "1", 2: None, 3: "c^d", 5: "x"}) == "OBX|1||c^d||x"
    assert segment("OBX", {5: "x", 1: "1", 3: "c^d"}) == "OBX|1||c^d||x"
    assert segment("NTE", {1: None, 3: ""}) == "NTE"


@pytest.mark.parametrize("version", ["2.5.1", "2.3.1"])
def test_the_check_on_built_segments_finds_what_the_check_on_the_text_finds(tmp_path, version):
    assert control_id_fits(version)  # MSH-10 takes a 20-character control id as it takes the placeholder
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    with duckdb.connect(str(wh), read_only=True) as con:
        planned = build_plan(con, "millennium-r4", ["adt", "oru", "vxu", "mdm"], Header(version=version),
                             "20250101120000+0000", {}, tmp_path)  # fmt: skip
    structures = {"adt": "ADT_A05" if version != "2.3.1" else "ADT_A01", "oru": "ORU_R01",
                  "vxu": "VXU_V04", "mdm": "MDM_T02"}  # fmt: skip
    texts = [(p.text, structures[p.kind]) for p in planned if p.text]
    assert len(texts) >= 4
    for text, structure in texts:
        segments = text.split("\r")[:-1]
        assert check_segments(segments, structure, version) == check(text, structure, version) == []
        # A finding in a segment is found both ways (an OBX-11 that is no code of table 0085).
        if structure == "ORU_R01":
            bad = [s.replace("|F|", "|?|", 1) if s.startswith("OBX") else s for s in segments]
            found = check_segments(bad, structure, version)
            assert found == check("\r".join(bad) + "\r", structure, version)
            assert any(f.startswith("OBX-11 ") for f in found)


def test_no_ack_within_the_timeout_resends_the_same_message_then_fails(caplog):
    """The watchdog aborts a connection that waited longer than the timeout; the same bytes go again on a
    new one, up to max_attempts, then the outcome is failed with "timeout"."""
    outcomes = []
    msg = b"MSH|^~\\&|S|S|R|R|20250101||ADT^A28|CID0001|P|2.5.1\rEVN|A28\r"
    with Peer(mode="silent") as peer, caplog.at_level(logging.WARNING, logger="pipelines.backload.hl7.mllp"):
        policy = SendPolicy(timeout=0.3, max_attempts=2)
        asyncio.run(send_all("127.0.0.1", peer.port, [Item(1, "CID0001", "p", msg)], policy, outcomes.append))
    (o,) = outcomes
    assert (o.state, o.ack_code, o.error_codes, o.attempts) == ("failed", None, ["timeout"], 2)
    assert peer.received["CID0001"] == 2
    assert sum("(TimeoutError)" in r.getMessage() for r in caplog.records) == 2


def test_a_long_segment_is_checked_as_a_short_one_without_being_remembered():
    """A document's content (tens of kB, never met again) is checked field by field like any segment, but
    neither the line nor the field is kept in the check's memos."""
    from pipelines.backload.hl7 import structure

    head = "MSH|^~\\&|S|S|R|R|20250101||MDM^T02^MDM_T02|CONTROLID|P|2.5.1"
    body = [
        "EVN|T02|20250101",
        "PID|1||X1^^^A^MR||Doe^J",
        "PV1|1|N",
        segment("TXA", {1: "1", 2: "CN", 3: "TX", 12: "D1", 17: "AU"}),
    ]
    content = "A" * (structure._MEMO_LONGEST + 10)
    good = f"OBX|1|ED|DOC^document^L|1|^application^pdf^Base64^{content}||||||F"
    bad = good.replace("||||||F", "||||||?")  # OBX-11 no code of table 0085
    for obx in (good, bad):
        short = obx.replace(content, "A")
        expected = check_segments([head, *body, short], "MDM_T02", "2.5.1")
        memo = structure._memo["2.5.1"]
        assert check_segments([head, *body, obx], "MDM_T02", "2.5.1") == expected
        assert obx not in memo and not any(
            content in k for m in structure._field_memos("2.5.1", "OBX") for k in m
        )
        assert expected == ([] if obx is good else ["OBX-11 is not a code of table 0085"])


def test_the_bytes_that_go_are_the_text_encoded(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    with duckdb.connect(str(wh), read_only=True) as con:
        planned = build_plan(con, "millennium-r4", ["adt", "oru", "vxu", "mdm"], Header(),
                             "20250101120000+0000", {}, tmp_path)  # fmt: skip
    sent = [p for p in planned if p.text]
    assert sent and all(p.data == p.text.encode() for p in sent)
    assert all(p.data is None for p in planned if p.status != "send")
