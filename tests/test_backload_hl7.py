"""HL7 v2 back-load: golden messages per type, hl7apy over every builder's output, ACK handling per code,
kill-and-resume against a counting peer, and no record values in logs."""

from __future__ import annotations

import base64
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import orjson
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from pipelines.backload.hl7.mllp import SendPolicy, read_ack, retryable
from pipelines.backload.hl7.plan import build_plan
from pipelines.backload.hl7.runner import Hl7Options, backload_hl7
from pipelines.backload.hl7.segments import Header
from pipelines.backload.hl7.structure import check
from pipelines.common.reasons import reason_codes
from tests.backload_builders import build_warehouse
from tests.hl7_node_peer import NodePeer
from tests.hl7_peer import Peer
from tests.hl7back_builders import resources

GOLDEN = Path(__file__).parent / "golden" / "hl7back"
REGENERATE = os.environ.get("EHRLIFT_REGENERATE_GOLDEN") == "1"
WHEN = "20250101120000+0000"
# Generous: on a loaded machine a slow ACK must not become a resend that the assertions would count.
ACK_TIMEOUT = 3.0


def _plan(tmp_path, version="2.5.1", kinds=("adt", "oru", "vxu", "mdm")):
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    con = duckdb.connect(str(wh), read_only=True)
    try:
        return build_plan(con, "millennium-r4", list(kinds), Header(version=version), WHEN, {}, tmp_path)
    finally:
        con.close()


@pytest.mark.parametrize("version", ["2.5.1", "2.3.1"])
def test_golden_messages(tmp_path, version):
    planned = _plan(tmp_path, version)
    for kind in ("adt", "oru", "vxu", "mdm"):  # one golden file per message type, segments one per line
        text = "\n".join(
            f"# {p.seq} {p.resource_type}/{p.warehouse_id} {p.status} {p.reason or ''}\n"
            + (p.text or "").replace("\r", "\n")
            for p in planned
            if p.kind == kind
        )
        golden = GOLDEN / version / f"{kind}.hl7"
        if REGENERATE:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{kind} messages differ: run `make golden`"


def test_plan_order_merges_and_codes(tmp_path):
    planned = _plan(tmp_path)
    sendable = [(p.kind, p.warehouse_id) for p in planned if p.status == "send"]
    # One patient (p0 merged into p1): registration first, then the result, immunizations, the document.
    assert sendable == [("adt", "p1"), ("oru", "r1"), ("vxu", "i1"), ("vxu", "i2"), ("mdm", "d1")]
    merged = next(p for p in planned if p.warehouse_id == "p0")
    assert (merged.status, merged.reason) == ("not_sendable", "hl7_patient_merged")
    oru = next(p.text for p in planned if p.kind == "oru")
    segs = oru.split("\r")
    pid = next(s for s in segs if s.startswith("PID"))
    assert pid.split("|")[3] == "MRN\\F\\001^^^&2.16.840.1.113883.3.9999.1&ISO^MR"  # the survivor's, escaped
    assert pid.split("|")[5] == "O'Brien\\S\\Smith^Ann^Marie^^^^L"
    obx = next(s for s in segs if s.startswith("OBX|1|"))
    # Standard code first, the site's Millennium alias in the second triplet.
    assert obx.split("|")[3] == "2345-7^Glucose^LN^2700655^Glucose Lvl^CERNER"
    assert obx.split("|")[5:9] == ["105.5", "mg/dL^^UCUM", "70-99", "H"]
    assert "NTE|1||fasting \\R\\8h\\.br\\repeat" in segs
    vxu = [p.text for p in planned if p.kind == "vxu"]
    refused = next(t for t in vxu if "|RE|A" in t)
    rxa = next(s for s in refused.split("\r") if s.startswith("RXA")).split("|")
    assert rxa[18].startswith("PATOBJ^patient objection") and rxa[20] == "RE"


@pytest.mark.parametrize("version", ["2.5.1", "2.3.1"])
def test_hl7apy_accepts_every_builder(tmp_path, version):
    planned = _plan(tmp_path, version)
    texts = [p.text for p in planned if p.text]
    assert {t.split("|")[8].split("^")[0] for t in texts} == {"ADT", "ORU", "VXU", "MDM"}
    for text in texts:
        parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()


def test_structure_check_findings():
    good = (
        "MSH|^~\\&|A|B|C|D|20240101||ORU^R01^ORU_R01|X1|P|2.5.1\r"
        "PID|1||1^^^&1.2&ISO^MR||D^J\rOBR|1|||1^a^LN\r"
    )
    assert check(good, "ORU_R01", "2.5.1") == []
    assert "PID-3 is required" in check(good.replace("1^^^&1.2&ISO^MR", ""), "ORU_R01", "2.5.1")
    assert "required group ORU_R01_PATIENT_RESULT is missing" in check(
        good.split("PID")[0], "ORU_R01", "2.5.1"
    )
    assert "MSH-11.1 is not a code of table 0103" in check(good.replace("|P|", "|Q|"), "ORU_R01", "2.5.1")
    bad_order = good.replace("PID|1||1^^^&1.2&ISO^MR||D^J\rOBR|1|||1^a^LN\r", "OBR|1|||1^a^LN\rPID|1||1||D\r")
    assert "required group ORU_R01_ORDER_OBSERVATION is missing" in check(bad_order, "ORU_R01", "2.5.1")
    assert reason_codes()["hl7_structure"]["outcome"] == "not_sendable"


def test_not_sendable_reasons(tmp_path):
    res = [r for r in resources() if r["id"] != "o2"]  # the report's second result is missing
    doc = next(r for r in res if r["id"] == "d1")
    doc["content"] = [{"attachment": {"contentType": "application/pdf", "url": "landing/none"}}]
    wh = build_warehouse(tmp_path / "w.duckdb", res)
    with duckdb.connect(str(wh), read_only=True) as con:
        planned = build_plan(con, "millennium-r4", ["oru", "mdm"], Header(), WHEN, {}, tmp_path)
    got = {p.warehouse_id: p.reason for p in planned}
    assert got == {"r1": "hl7_reference_missing", "d1": "hl7_document_content_missing"}


def test_document_files_are_read_only_inside_the_landing_root(tmp_path):
    """An attachment url resolves inside the warehouse's folder, links followed: a url, a linked file or a
    linked folder that leads outside is refused, as is anything but a regular file (a pipe is not waited
    on); a link that stays inside is read."""
    root = tmp_path / "root"
    (root / "landing" / "docs").mkdir(parents=True)
    (root / "landing" / "docs" / "note.txt").write_text("inside note")
    (tmp_path / "outside.txt").write_text("outside note")
    (root / "landing" / "link-in.txt").symlink_to(root / "landing" / "docs" / "note.txt")
    (root / "landing" / "link-out.txt").symlink_to(tmp_path / "outside.txt")
    (root / "landing" / "dir-out").symlink_to(tmp_path)
    os.mkfifo(root / "landing" / "pipe")
    urls = {
        "plain": "landing/docs/note.txt",
        "link-in": "landing/link-in.txt",
        "dotted": "landing/docs/../../../outside.txt",
        "link-out": "landing/link-out.txt",
        "dir-out": "landing/dir-out/outside.txt",
        "pipe": "landing/pipe",
        "folder": "landing/docs",
    }
    res = [r for r in resources() if r["resourceType"] != "DocumentReference"]
    doc = next(r for r in resources() if r["resourceType"] == "DocumentReference")
    for key, url in urls.items():
        res.append({**doc, "id": key, "content": [{"attachment": {"contentType": "text/plain", "url": url}}]})
    wh = build_warehouse(tmp_path / "w.duckdb", res)
    with duckdb.connect(str(wh), read_only=True) as con:
        planned = build_plan(con, "millennium-r4", ["mdm"], Header(), WHEN, {}, root)
    got = {p.warehouse_id: (p.reason or p.status) for p in planned}
    assert got == {
        "plain": "send", "link-in": "send", "dotted": "hl7_document_content_missing",
        "link-out": "hl7_document_content_missing", "dir-out": "hl7_document_content_missing",
        "pipe": "hl7_document_content_missing", "folder": "hl7_document_content_missing",
    }  # fmt: skip
    texts = {p.warehouse_id: p.text for p in planned if p.text}
    assert all("|TX|" in t and "inside note" in t and "outside" not in t for t in texts.values())


def test_ack_reading_and_retry_rules():
    assert read_ack(b"MSH|^~\\&|X\rMSA|AE|C1\rERR|||207^Application internal error^HL70357|E") == (
        "AE",
        "C1",
        ["207"],
    )
    assert read_ack(b"MSH|^~\\&|X\rMSA|AR|C2\rERR|PID^1^3^101&Required") == ("AR", "C2", ["101"])
    assert retryable("AE", ["207"]) and not retryable("AE", ["101"]) and not retryable("AE", [])
    assert retryable("AR", []) and not retryable("AR", ["101"])


def _send(tmp_path, peer, **policy):
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    opts = Hl7Options(to=f"127.0.0.1:{peer.port}", batch=2, policy=SendPolicy(timeout=ACK_TIMEOUT, **policy))
    return wh, backload_hl7(wh, opts)


@pytest.mark.parametrize(
    ("mode", "error", "fail_times", "done", "attempts"),
    [
        ("AA", "0", 0, 5, 1),
        ("AE", "207", 1, 5, 2),  # internal error: retried, then accepted
        ("AE", "101", 1, 0, 1),  # a content error: not retried, failed
        ("AR", "", 1, 5, 2),  # rejected without a content error: retried
        ("AR", "207", 9, 0, 3),  # never accepted: failed after the bounded tries
        ("silent", "", 1, 5, 2),  # no ACK: reconnect, same control id again
        ("drop", "", 1, 5, 2),  # connection dropped mid-message
    ],
)
def test_ack_handling_per_code(tmp_path, mode, error, fail_times, done, attempts, caplog):
    caplog.set_level(logging.DEBUG)
    with Peer(mode=mode, error_code=error, fail_times=fail_times) as peer:
        wh, result = _send(tmp_path, peer)
    assert result["done"] == done and result["failed"] == 5 - done
    with duckdb.connect(str(wh), read_only=True) as con:
        rows = con.execute(
            "SELECT state, ack_code, error_codes, attempts FROM ops.backload_hl7_results"
        ).fetchall()
    assert {r[3] for r in rows} == {attempts}
    if done == 0 and mode != "silent":
        assert {(r[1], r[2]) for r in rows} == {(mode, error or None)}
    assert set(peer.received) == {r for r in peer.received}  # every control id sent was the planned one
    assert all(n == attempts for n in peer.received.values())
    for secret in ("O'Brien", "MRN", "1980", "Denver", "2345-7", "LOT-9"):
        assert secret not in caplog.text


def test_rerun_sends_only_what_was_not_acknowledged(tmp_path):
    with Peer(mode="AE", error_code="101", fail_times=1) as peer:
        wh, first = _send(tmp_path, peer)
        assert first["failed"] == 5
        second = backload_hl7(
            wh, Hl7Options(to=f"127.0.0.1:{peer.port}", policy=SendPolicy(timeout=ACK_TIMEOUT))
        )
        assert second["done"] == 5
        third = backload_hl7(
            wh, Hl7Options(to=f"127.0.0.1:{peer.port}", policy=SendPolicy(timeout=ACK_TIMEOUT))
        )
    assert third["sent"] == 0
    assert sorted(peer.accepted) == sorted(peer.received)


@pytest.mark.parametrize("parts", [None, "4"], ids=["whole", "in-parts"])
def test_kill_and_resume_acknowledges_every_message_once(tmp_path, parts):
    res = resources()
    for i in range(30):  # more patients, so a kill lands mid-send
        res.append({**res[0], "id": f"px{i}", "identifier": [{"system": "urn:oid:1.2.3", "value": f"X{i}"}]})
    wh = build_warehouse(tmp_path / "w.duckdb", res)
    cmd = [sys.executable, "-m", "pipelines.cli", "backload", "hl7", "--warehouse", str(wh), "--batch", "3"]
    cmd += ["--part-size", parts] if parts else []  # in parts: kills land inside parts and between them
    with Peer(delay=0.02) as peer:
        cmd += ["--to", f"127.0.0.1:{peer.port}"]
        kills = 0
        for _ in range(4):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            start = len(peer.received)
            while len(peer.received) < start + 6 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait(30)
        final = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        assert final.returncode == 0, final.stderr.decode()[-2000:]
    with duckdb.connect(str(wh), read_only=True) as con:
        rows = con.execute(
            "SELECT DISTINCT control_id FROM ops.backload_hl7_messages WHERE status = 'send'"
        ).fetchall()
    planned = {r[0] for r in rows}
    assert kills >= 2
    # Every planned message acknowledged exactly once by the peer (it deduplicates on MSH-10).
    assert sorted(peer.accepted) == sorted(planned) and len(peer.accepted) == len(set(peer.accepted))
    # Resends only for messages in doubt at a kill: at most one batch of unrecorded ACKs per kill.
    assert sum(n - 1 for n in peer.received.values()) <= kills * 3
    assert not re.search(rb"O'Brien|MRN|Denver", final.stderr)


def test_report_section_counts_without_values(tmp_path):
    from pipelines.report.render import write_report

    with Peer(mode="AE", error_code="101", fail_times=1) as peer:
        wh, result = _send(tmp_path, peer)
    assert result["failed"] == 5
    files = write_report(wh, tmp_path / "report")
    data = orjson.loads(files.data.read_bytes())
    (section,) = data["backload_hl7"]
    assert section["reconciles"]
    kinds = {k["kind"]: (k["planned"], k["failed"], k["not_sendable"]) for k in section["kinds"]}
    assert kinds == {"adt": (2, 1, 1), "oru": (1, 1, 0), "vxu": (2, 2, 0), "mdm": (1, 1, 0)}
    assert section["reasons"] == [{"kind": "adt", "reason": "hl7_patient_merged", "count": 1}]
    html = files.html.read_text()
    assert 'id="backload-hl7"' in html
    for value in ("O'Brien", "MRN", "2345-7", "LOT-9", "Denver"):
        assert value not in html and value not in files.data.read_text()


def test_dag_task_function_sends_and_skips_without_a_target(tmp_path, caplog):
    from pipelines import tasks as stages

    res = resources()
    res.append({**res[0], "id": "px", "identifier": [{"system": "urn:oid:1.2.3", "value": "X"}]})
    wh = build_warehouse(tmp_path / "w.duckdb", res)
    assert stages.backload_hl7({"warehouse": str(wh)}) == {"skipped": "no hl7_to"}
    caplog.set_level("INFO", logger="pipelines.backload.hl7.runner")
    with Peer() as peer:
        params = {"warehouse": str(wh), "hl7_to": f"127.0.0.1:{peer.port}", "hl7_messages": "adt,vxu"}
        result = stages.backload_hl7({**params, "hl7_part_size": 2})  # a part per patient
    assert (result["done"], result["failed"]) == (4, 0)
    assert "(2 part(s))" in caplog.text
    assert sorted(peer.accepted) == sorted(peer.received)


@pytest.mark.parametrize(
    ("mode", "fail_times", "done", "attempts"),
    [
        ("AA", 0, 5, 1),
        ("AE", 9, 0, 1),  # an application error without a retryable ERR code: failed at once
        ("AR", 1, 5, 2),  # rejected: retried, then accepted
        ("silent", 1, 5, 2),  # no ACK: reconnect and the same control id again
        ("drop", 1, 5, 2),  # connection dropped: reconnect and resend
    ],
)
def test_independent_peer_node_hl7_server(tmp_path, mode, fail_times, done, attempts):
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    with NodePeer(mode, fail_times) as peer:
        # node-hl7-server 2.5.0 answers every later message on a connection for the first one it got: one
        # message per connection is how a receiver like it is fed.
        policy = SendPolicy(timeout=ACK_TIMEOUT, reconnect_after=1)
        result = backload_hl7(wh, Hl7Options(to=f"127.0.0.1:{peer.port}", policy=policy))
        time.sleep(0.2)  # the peer's last lines
    assert (result["done"], result["failed"]) == (done, 5 - done)
    assert len(peer.received) == 5 and set(peer.received.values()) == {attempts}
    assert len(peer.accepted) == len(set(peer.accepted)) == done


def test_ack_for_another_message_is_never_taken_as_done(tmp_path):
    """Fed on one connection, node-hl7-server 2.5.0 acknowledges the first message again: the sender sees the
    MSA-2 mismatch, reconnects and resends, and records each message only on its own ACK."""
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    with NodePeer("AA") as peer:
        result = backload_hl7(
            wh, Hl7Options(to=f"127.0.0.1:{peer.port}", policy=SendPolicy(timeout=ACK_TIMEOUT))
        )
        time.sleep(0.2)
    assert (result["done"], result["failed"]) == (5, 0)
    with duckdb.connect(str(wh), read_only=True) as con:
        attempts = dict(con.execute("SELECT seq, attempts FROM ops.backload_hl7_results").fetchall())
    assert attempts[1] == 1 and all(attempts[s] == 2 for s in attempts if s != 1)


def test_a_message_that_fails_its_structure_is_not_sendable_with_the_finding(tmp_path):
    res = resources()
    res[0] = {**res[0], "identifier": []}  # PID-3 is required
    wh = build_warehouse(tmp_path / "w.duckdb", res)
    with duckdb.connect(str(wh), read_only=True) as con:
        planned = build_plan(con, "millennium-r4", ["adt", "vxu"], Header(), WHEN, {}, tmp_path)
    refused = {(p.kind, p.warehouse_id): (p.reason, p.detail) for p in planned if p.status == "not_sendable"}
    assert refused[("adt", "p1")] == ("hl7_structure", "PID-3 is required")
    assert refused[("vxu", "i1")] == ("hl7_structure", "PID-3 is required")


def test_validate_full_runs_hl7apy_on_every_message(tmp_path):
    res = resources()
    doc = next(r for r in res if r["id"] == "d1")
    blob = base64.b64encode(b"%PDF-1.4 " + b"x" * 400).decode()
    doc["content"] = [{"attachment": {"contentType": "application/pdf", "data": blob}}]
    wh = build_warehouse(tmp_path / "w.duckdb", res)
    plain = backload_hl7(wh, Hl7Options(to=None))
    assert (plain["send"], plain["not_sendable"]) == (5, 1)
    full = backload_hl7(wh, Hl7Options(to=None, validate="full"))
    # hl7apy reads a varies-typed OBX-5 with ST's 199-character limit, so it refuses an ED document the
    # standard (ED-5 is TX) allows: --validate full is stricter, and says which check refused it.
    assert (full["send"], full["not_sendable"]) == (4, 2)
    with duckdb.connect(str(wh), read_only=True) as con:
        detail = con.execute(
            "SELECT detail FROM ops.backload_hl7_messages WHERE plan_id = ? AND kind = 'mdm'",
            [full["plan_id"]],
        ).fetchone()[0]
    assert detail == "hl7apy: MaxLengthReached"


def test_identity_merges_from_person_map_are_honoured(tmp_path):
    res = resources()
    twin = {**res[0], "id": "p2", "identifier": [{"system": "urn:oid:1.2.3", "value": "T-2"}]}
    shot = {**next(r for r in res if r["id"] == "i1"), "id": "i3", "patient": {"reference": "Patient/p2"}}
    wh = build_warehouse(tmp_path / "w.duckdb", [*res, twin, shot])
    with duckdb.connect(str(wh)) as con:  # the identity stage's contract table
        con.execute("CREATE TABLE IF NOT EXISTS ops.person_map (patient_id VARCHAR, person_id VARCHAR, "
                    "survivor BOOLEAN, run_id VARCHAR)")  # fmt: skip
        con.execute("INSERT INTO ops.person_map VALUES ('p1', 'P', true, 'r'), ('p2', 'P', false, 'r')")
        planned = build_plan(con, "millennium-r4", ["adt", "vxu"], Header(), WHEN, {}, tmp_path)
    by_id = {p.warehouse_id: p for p in planned}
    assert (by_id["p2"].status, by_id["p2"].reason) == ("not_sendable", "hl7_patient_merged")
    assert by_id["i3"].status == "send" and by_id["i3"].patient_id == "p1"
    assert "|MRN\\F\\001^" in by_id["i3"].text  # the survivor's identifier in PID-3


def test_rate_spaces_messages_on_a_fake_clock(monkeypatch):
    import asyncio
    import types

    from pipelines.backload.hl7 import mllp

    now = [100.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    monkeypatch.setattr(mllp, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(mllp.asyncio, "sleep", fake_sleep)
    pace = mllp._Pace(4.0)  # 4 messages per second over all connections

    async def five() -> None:
        for _ in range(5):
            await pace.wait()

    asyncio.run(five())
    assert slept == [0.25, 0.25, 0.25, 0.25]  # the first goes at once
    assert mllp._Pace(None).gap == 0.0


def test_changed_registration_goes_as_a31_and_only_it_is_sent(tmp_path):
    with Peer() as peer:
        wh, first = _send(tmp_path, peer)
        assert first["done"] == 5
        with duckdb.connect(str(wh)) as con:
            body = orjson.loads(
                con.execute("SELECT resource FROM fhir.Patient WHERE id = 'p1'").fetchone()[0]
            )
            body["name"][0]["family"] = "Byrne"
            con.execute("UPDATE fhir.Patient SET resource = ? WHERE id = 'p1'", [orjson.dumps(body).decode()])
        second = backload_hl7(wh, Hl7Options(to=f"127.0.0.1:{peer.port}", kinds=("adt",)))
    assert (second["send"], second["done"]) == (1, 1)
    with duckdb.connect(str(wh), read_only=True) as con:
        types = con.execute(
            "SELECT message_type FROM ops.backload_hl7_messages WHERE plan_id = ? AND status = 'send'",
            [second["plan_id"]],
        ).fetchall()
    assert types == [("ADT^A31",)]
    assert len(peer.accepted) == 6


def test_every_message_is_in_the_journal_before_it_is_sent(tmp_path):
    """The builder streams while the sender sends: a message reaches the peer only once its control id is in
    the send journal on disk, so a kill at any point leaves nothing sent that a resume does not know."""
    from pipelines.backload.hl7.journal import folder

    res = resources()
    for i in range(40):  # several of the builder's chunks (16, 32, ...)
        res.append({**res[0], "id": f"px{i}", "identifier": [{"system": "urn:oid:1.2.3", "value": f"X{i}"}]})
    wh = build_warehouse(tmp_path / "w.duckdb", res)
    missing: list[str] = []

    def stored(cid: str) -> None:
        # Complete lines only: a line is on disk whole before the message goes.
        lines = "".join(p.read_text().rpartition("\n")[0] for p in folder(wh).glob("*.jnl")).split("\n")
        if not any(ln.startswith("P\t") and ln.split("\t")[5] == cid for ln in lines):
            missing.append(cid)

    with Peer(on_receive=stored) as peer:
        result = backload_hl7(wh, Hl7Options(to=f"127.0.0.1:{peer.port}", batch=4))
    assert (result["sent"], result["done"], result["failed"]) == (45, 45, 0)
    assert len(peer.accepted) == 45 and missing == []
    with duckdb.connect(str(wh), read_only=True) as con:  # folded into the tables at the end
        n = con.execute(
            "SELECT count(DISTINCT control_id) FROM ops.backload_hl7_results WHERE state = 'done'"
        )
        assert n.fetchone()[0] == 45
    assert not list(folder(wh).glob("*.jnl"))


def test_a_builder_failure_stops_the_run_with_a_clear_error_and_no_values(tmp_path, monkeypatch, capfd):
    from pipelines.backload.hl7 import stream
    from pipelines.common.errors import EhrliftError

    def broken(*_args):
        raise KeyError("MRN|001")

    monkeypatch.setattr(stream, "build", broken)  # the forked builder inherits it
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    with Peer() as peer, pytest.raises(EhrliftError, match=r"building the HL7 messages failed \(KeyError\)"):
        backload_hl7(wh, Hl7Options(to=f"127.0.0.1:{peer.port}"))
    assert not peer.received
    out, err = capfd.readouterr()
    assert "MRN" not in out + err


def test_recorder_group_writes_with_at_most_batch_outcomes_unrecorded(tmp_path):
    import asyncio
    from datetime import UTC, datetime

    from pipelines.backload.hl7.journal import Journal, read
    from pipelines.backload.hl7.mllp import Item, Outcome
    from pipelines.backload.hl7.stream import Recorder

    path = tmp_path / "j" / "plan.jnl"
    jnl = Journal(path, "plan", "millennium-r4", "run", datetime.now(UTC))
    rec = Recorder(jnl, bound=8)
    writes: list[int] = []
    write = rec._write

    def counted(outcomes):
        writes.append(len(outcomes))
        write(outcomes)

    rec._write = counted
    unrecorded: list[int] = []

    async def send_forty() -> None:
        for i in range(40):
            await rec.outcome(Outcome(Item(i, f"C{i}", "p", b""), "done", "AA", [], 1))
            unrecorded.append(len(rec.outcomes) + rec.inflight)
        await rec.close()

    try:
        asyncio.run(send_forty())
    finally:
        jnl.close()
    stored = read(path)
    assert stored is not None and len({r[1] for r in stored.results}) == 40 and sum(writes) == 40
    assert len(writes) < 40 and max(writes) <= 8  # group writes, none larger than the bound
    assert max(unrecorded) < 8  # the sender waited whenever the bound was reached


def test_without_fork_the_builder_runs_in_a_thread_with_the_same_outcome(tmp_path, monkeypatch):
    from pipelines.backload.hl7 import stream

    monkeypatch.setattr(stream, "can_fork", lambda: False)  # a daemonic worker, or a platform without fork
    with Peer() as peer:
        wh, result = _send(tmp_path, peer)
    assert (result["sent"], result["done"], result["failed"]) == (5, 5, 0)
    assert sorted(peer.accepted) == sorted(peer.received)
    with duckdb.connect(str(wh), read_only=True) as con:
        stored = con.execute("SELECT status, count(*) FROM ops.backload_hl7_messages GROUP BY ALL ORDER BY 1")
        assert stored.fetchall() == [("not_sendable", 1), ("send", 5)]


def test_a_send_on_a_terminal_shows_acknowledged_of_planned_messages(tmp_path, monkeypatch):
    from rich.console import Console

    from pipelines.common.progress import Bars

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    bars = Bars(True)
    with Peer(mode="AA") as peer, bars.running():
        _, result = _send(tmp_path, peer)
    (task,) = [t for t in bars._progress.tasks if t.description == "hl7 send"]
    assert result["sent"] == 5 and (task.completed, task.total, task.fields["unit"]) == (5, 5, "messages")
