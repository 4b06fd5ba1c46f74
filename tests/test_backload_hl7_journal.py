"""The HL7 back-load's send journal: it survives kill -9 and is applied by the next run (nothing lost or sent
twice), a torn last line is ignored, it is folded into the tables exactly once, and it holds codes only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import duckdb
import pytest

from pipelines.backload.hl7 import journal
from pipelines.backload.hl7.journal import Journal, folder, line, read, recover
from pipelines.backload.hl7.plan import build_plan
from pipelines.backload.hl7.runner import Hl7Options, backload_hl7
from pipelines.backload.hl7.segments import Header
from pipelines.backload.hl7.stream import PLAN_TYPES, chunk_columns, insert, plan_line
from pipelines.common.errors import EhrliftError
from pipelines.common.warehouse import open_warehouse
from tests.backload_builders import build_warehouse
from tests.hl7_peer import Peer
from tests.hl7back_builders import resources

SECRETS = ("O'Brien", "MRN", "1980", "Denver", "303-555", "2345-7", "LOT-9", "Ann")


def _many(n: int) -> list[dict]:
    res = resources()
    for i in range(n):
        res.append({**res[0], "id": f"px{i}", "identifier": [{"system": "urn:oid:1.2.3", "value": f"X{i}"}]})
    return res


def _counts(wh, plan_id):
    with duckdb.connect(str(wh), read_only=True) as con:
        msgs = con.execute(
            "SELECT count(*), count(control_id) FROM ops.backload_hl7_messages WHERE plan_id = ?", [plan_id]
        ).fetchone()
        results = con.execute(
            "SELECT count(*) FROM ops.backload_hl7_results WHERE plan_id = ?", [plan_id]
        ).fetchone()[0]
    return msgs, results


def test_journal_survives_kill_and_the_next_run_applies_it_first(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", _many(30))
    cmd = [sys.executable, "-m", "pipelines.cli", "backload", "hl7", "--warehouse", str(wh), "--batch", "3"]
    with Peer(delay=0.02) as peer:
        cmd += ["--to", f"127.0.0.1:{peer.port}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(peer.accepted) < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the send ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        left = list(folder(wh).glob("*.jnl"))
        assert len(left) == 1  # the killed send's journal, not folded
        killed = read(left[0])
        assert killed is not None
        journaled = {r[1] for r in killed.results if r[2] == "done"}
        assert journaled and journaled <= set(peer.accepted)
        (_rows, built), results = _counts(wh, killed.plan_id)
        # While sending, outcomes are in the journal only; what building decided goes into the plan rows
        # once building has ended (all of it, and only what the journal lists), or not yet.
        assert results == 0 and built in (0, sum(1 for p in killed.plans if p[4]))
        sent_before = dict(peer.received)

        final = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        assert final.returncode == 0, final.stderr.decode()[-2000:]
    assert not list(folder(wh).glob("*.jnl"))
    (_rows, built), results = _counts(wh, killed.plan_id)
    assert results == len(killed.results) and built == sum(1 for p in killed.plans if p[4])
    # What the journal held as acknowledged was not sent again; everything acknowledged once.
    assert all(peer.received[cid] == sent_before[cid] for cid in journaled)
    assert len(peer.accepted) == len(set(peer.accepted))
    with duckdb.connect(str(wh), read_only=True) as con:
        planned = {r[0] for r in con.execute(
            "SELECT DISTINCT control_id FROM ops.backload_hl7_messages WHERE status = 'send'"
        ).fetchall()}  # fmt: skip
    assert sorted(peer.accepted) == sorted(planned)


def _journaled_plan(tmp_path):
    """A stored plan (as a send stores it before building) and a journal of it: every message built, the
    first three acknowledged, then a line torn by a kill mid-write."""
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    con = open_warehouse(wh)
    planned = build_plan(
        con, "millennium-r4", ["adt", "oru", "vxu", "mdm"], Header(), "20250101120000+0000", {}
    )
    now = datetime.now(UTC)
    skeleton = [  # as stored before building: no control id yet; refused at planning already
        ("p1", p.seq, "millennium-r4", p.kind, None, p.resource_type, p.warehouse_id, p.patient_id,
         "send" if p.status != "not_sendable" else p.status, p.reason, p.detail, None, None, None, now, "r1")
        for p in planned
    ]  # fmt: skip
    insert(con, "ops.backload_hl7_messages", PLAN_TYPES, skeleton)
    path = folder(wh) / "p1.jnl"
    j = Journal(path, "p1", "millennium-r4", "r1", now)
    sendable = [p for p in planned if p.status == "send"]
    j.write([plan_line(p) for p in planned])
    stamp = f"{now.timestamp():.6f}"
    j.write([line("R", p.seq, p.control_id, "done", "AA", "", 1, stamp) for p in sendable[:3]])
    j.write([f"R\t{sendable[3].seq}\t{sendable[3].control_id}\tdo"])  # torn: no line end
    j.close()
    return wh, con, path, planned, sendable


def test_a_torn_last_line_is_ignored_and_the_journal_is_folded_exactly_once(tmp_path):
    wh, con, path, planned, sendable = _journaled_plan(tmp_path)
    try:
        held = read(path)
        assert held is not None and held.torn and len(held.results) == 3
        journal.fold(con, held)  # as if a crash came after the fold's commit, before the file was removed
        assert recover(con, wh) == 1
        assert not path.exists()
        assert recover(con, wh) == 0  # nothing left to apply
        rows = con.execute(
            "SELECT seq, control_id, state, ack_code, attempts FROM ops.backload_hl7_results "
            "WHERE plan_id = 'p1' ORDER BY seq"
        ).fetchall()
        assert rows == [(p.seq, p.control_id, "done", "AA", 1) for p in sendable[:3]]
        stored = con.execute(
            "SELECT seq, status, reason, control_id, message_type, content_sha256 "
            "FROM ops.backload_hl7_messages WHERE plan_id = 'p1' ORDER BY seq"
        ).fetchall()
        assert stored == [
            (p.seq, p.status, p.reason, p.control_id, p.message_type, p.content_sha256) for p in planned
        ]
    finally:
        con.close()


_STORED = (
    "SELECT seq, status, reason, detail, control_id, message_type, content_sha256, message "
    "FROM ops.backload_hl7_messages WHERE plan_id = 'p1' ORDER BY seq"
)


def _folded(tmp_path, name, built_of):
    """The plan's rows after applying its journal, with the sent texts, from the lines or from columns."""
    _wh, con, path, planned, _sendable = _journaled_plan(tmp_path / name)
    try:
        built = built_of(planned)
        texts = None if built is not None else {p.seq: p.text.encode() for p in planned if p.text}
        journal.apply(con, path, texts, built)
        return con.execute(_STORED).fetchall(), planned
    finally:
        con.close()


def test_the_sender_folds_its_own_columns_exactly_as_the_journal_lines_fold(tmp_path):
    """The sending process folds what it journaled from the columns it still holds (no line re-read): the
    rows are those the journal's lines give; columns that do not match the lines are not used."""
    from_lines, planned = _folded(tmp_path, "lines", lambda planned: None)
    from_columns, _ = _folded(
        tmp_path, "columns", lambda planned: journal.built_table(chunk_columns(planned))
    )
    assert from_columns == from_lines
    assert {r[0]: r[7] for r in from_lines} == {p.seq: p.text for p in planned}  # the sent texts, as sent
    assert any(r[3] for r in from_lines)  # a refusal's finding, folded both ways
    # Fewer rows than plan lines (a write that failed after its lines reached the disk): the lines are
    # folded, with the texts the columns hold (here the first two messages').
    short, _ = _folded(tmp_path, "short", lambda planned: journal.built_table(chunk_columns(planned[:2])))
    assert [r[:7] for r in short] == [r[:7] for r in from_lines]
    assert [r[7] for r in short] == [r[7] if r[0] in (1, 2) else None for r in from_lines]


def test_the_sender_folds_its_held_outcomes_exactly_as_the_journal_lines_fold(tmp_path):
    """A send that ends whole folds the outcomes its Recorder wrote from what it holds (no line read back):
    the same table, down to the recorded times, as the file's R lines give, and those rows go in."""
    import asyncio

    from pipelines.backload.hl7.mllp import Item, Outcome
    from pipelines.backload.hl7.stream import Recorder

    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    con = open_warehouse(wh)
    try:
        planned = build_plan(
            con, "millennium-r4", ["adt", "oru", "vxu", "mdm"], Header(), "20250101120000+0000", {}
        )
        now = datetime.now(UTC)
        skeleton = [
            ("p1", p.seq, "millennium-r4", p.kind, None, p.resource_type, p.warehouse_id, p.patient_id,
             "send", None, None, None, None, None, now, "r1")
            for p in planned
        ]  # fmt: skip
        insert(con, "ops.backload_hl7_messages", PLAN_TYPES, skeleton)
        path = folder(wh) / "p1.jnl"
        sendable = [p for p in planned if p.status == "send"][:3]
        answers = [("done", "AA", [], 1), ("failed", "AE", ["207", "101"], 2), ("done", "AA", [], 1)]
        outcomes = [
            Outcome(Item(p.seq, p.control_id, "", b""), state, ack, errors, attempts)
            for p, (state, ack, errors, attempts) in zip(sendable, answers, strict=True)
        ]

        async def record() -> Recorder:
            rec = Recorder(Journal(path, "p1", "millennium-r4", "r1", now), bound=2)
            rec.journal.write([plan_line(p) for p in planned])  # as the chunk reader writes them
            for o in outcomes:
                await rec.outcome(o)
            await rec.close()
            rec.journal.close()
            return rec

        rec = asyncio.run(record())
        held = rec.written_table()
        from_lines = journal.read(path)
        assert from_lines is not None
        assert held.equals(journal.outcomes_of(from_lines.results))
        journal.apply_held(
            con, path, "p1", "millennium-r4", journal.built_table(chunk_columns(planned)), held
        )
        assert not path.exists()
        results = con.execute(
            "SELECT seq, control_id, state, ack_code, error_codes, attempts FROM ops.backload_hl7_results "
            "WHERE plan_id = 'p1' ORDER BY seq"
        ).fetchall()
        assert results == [
            (p.seq, p.control_id, state, ack, ",".join(errors) or None, attempts)
            for p, (state, ack, errors, attempts) in zip(sendable, answers, strict=True)
        ]
        assert con.execute(_STORED).fetchall() == [
            (p.seq, p.status, p.reason, p.detail, p.control_id, p.message_type, p.content_sha256, p.text)
            for p in planned
        ]
    finally:
        con.close()


def _sent_plan(tmp_path, name, monkeypatch, least=None, failing=False):
    """A whole send of 60 patients' messages; the plan rows and results as stored after it."""
    from pipelines.backload.hl7 import stream

    if least is not None:
        monkeypatch.setattr(stream, "INFOLD_ROWS", least)
    if failing:
        update = journal.update_plan_rows

        def refuse_parts(con, plan_id, built, keep_texts=True):
            if not keep_texts:
                raise duckdb.IOException("disk full")
            return update(con, plan_id, built, keep_texts)

        monkeypatch.setattr(journal, "update_plan_rows", refuse_parts)
    wh = build_warehouse(tmp_path / name / "w.duckdb", _many(60))
    with Peer() as peer:
        result = backload_hl7(wh, Hl7Options(to=f"127.0.0.1:{peer.port}"))
    monkeypatch.undo()
    assert result["failed"] == 0 and result["done"] == result["sent"] > 60
    with duckdb.connect(str(wh), read_only=True) as con:
        rows = con.execute(
            # (control ids and hashes differ between warehouses: MSH-7 is each one's run start)
            "SELECT seq, kind, warehouse_id, status, reason, message_type, control_id IS NOT NULL, "
            "contains(message, '|' || control_id || '|'), content_sha256 IS NOT NULL "
            "FROM ops.backload_hl7_messages ORDER BY seq"
        ).fetchall()
        results = con.execute(
            "SELECT seq, state, ack_code FROM ops.backload_hl7_results ORDER BY seq"
        ).fetchall()
    assert not list(folder(wh).glob("*.jnl"))
    return rows, results


def test_a_large_plan_goes_into_the_plan_rows_part_by_part_while_sending(tmp_path, monkeypatch):
    """Past INFOLD_ROWS built rows, what building decided goes into the plan rows while later messages are
    sent; the end puts in the rest. The rows, the texts and the results are those of a send that puts
    everything in at the end, and when such an update fails, the end puts everything in."""
    at_end = _sent_plan(tmp_path, "end", monkeypatch)
    in_parts = _sent_plan(tmp_path, "parts", monkeypatch, least=20)
    failed = _sent_plan(tmp_path, "failed", monkeypatch, least=20, failing=True)
    assert in_parts == at_end == failed
    rows, _results = at_end
    assert all(r[6] and r[7] and r[8] for r in rows if r[3] == "send")  # id, text with its id, hash


def test_a_damaged_middle_line_stops_with_a_clear_error_and_keeps_the_journal(tmp_path):
    wh, con, path, _planned, _sendable = _journaled_plan(tmp_path)
    try:
        text = path.read_text().split("\n")
        text[2] = "X\tnot a journal line"
        path.write_text("\n".join(text))
        with pytest.raises(EhrliftError, match="damaged at line 3"):
            recover(con, wh)
        assert path.exists()
    finally:
        con.close()


def test_plan_rows_never_built_are_dropped_when_no_journal_line_names_them(tmp_path):
    """A kill after the plan's rows were stored but before their journal lines: nothing of theirs was sent,
    so the next run removes them (they would otherwise count as pending forever)."""
    wh, con, path, planned, _sendable = _journaled_plan(tmp_path)
    try:
        path.write_text(path.read_text().split("\n", 1)[0] + "\n")  # the header only
        recover(con, wh)
        left = con.execute("SELECT count(*) FROM ops.backload_hl7_messages WHERE plan_id = 'p1'").fetchone()
        assert left[0] == sum(1 for p in planned if p.status != "send")  # refused at planning: kept
    finally:
        con.close()


def test_the_journal_holds_codes_only(tmp_path, monkeypatch):
    """Control ids, statuses, reason codes, field names and hashes: never message content or record ids."""
    copies: list[str] = []
    apply, apply_held = journal.apply, journal.apply_held

    def keep(con, path, *rest):
        copies.append(path.read_text())
        return apply(con, path, *rest)

    def keep_held(con, path, *rest):
        copies.append(path.read_text())
        return apply_held(con, path, *rest)

    monkeypatch.setattr(journal, "apply", keep)
    monkeypatch.setattr(journal, "apply_held", keep_held)
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    with Peer() as peer:
        result = backload_hl7(wh, Hl7Options(to=f"127.0.0.1:{peer.port}"))
    assert result["done"] == 5 and len(copies) == 1
    text = copies[0]
    # Control ids, hashes and epoch times are digits and hex: a record's year could occur in one by chance.
    words = re.sub(r"(?<![^\t\n])([0-9A-Fa-f]{20,64}|\d+\.\d{6})(?![^\t\n])", "#", text)
    for secret in (*SECRETS, "MSH|", "PID", "p1", "p0", "Patient/"):
        assert secret not in words
    for ln in text.splitlines()[1:]:
        kind, *fields = ln.split("\t")
        assert kind in ("P", "R")
        for f in fields:
            assert re.fullmatch(r"[A-Za-z0-9_.,;:^ ()/-]*", f), f


def test_several_builders_hand_over_in_plan_order(tmp_path):
    """Builders take every other chunk; the sender reads them in turn, so the plan and the order the peer sees
    are those of a single builder (control ids differ: MSH-7 is each warehouse's run start)."""
    runs = {}
    for builders in (1, 2):
        wh = build_warehouse(tmp_path / f"b{builders}" / "w.duckdb", _many(60))  # chunks 16, 32, 1, 16
        with Peer() as peer:
            result = backload_hl7(wh, Hl7Options(to=f"127.0.0.1:{peer.port}", builders=builders))
        with duckdb.connect(str(wh), read_only=True) as con:
            plan = con.execute(
                "SELECT seq, kind, warehouse_id, status, control_id "
                "FROM ops.backload_hl7_messages ORDER BY seq"
            ).fetchall()
        seq_of = {row[4]: row[0] for row in plan}
        received = [seq_of[cid] for cid in peer.received]  # in the order they arrived
        runs[builders] = (result["sent"], result["done"], [r[:4] for r in plan], received)
    assert runs[1][0] == runs[1][1] == 65
    assert runs[2] == runs[1] and runs[1][3] == sorted(runs[1][3])


def test_hand_overs_grow_to_the_bound_and_shrink_again_at_the_end():
    """Small first (sending starts soon) and small last (the last chunk's sending overlaps no building)."""
    from itertools import pairwise

    from pipelines.backload.hl7.stream import MAX_CHUNK, chunks

    assert chunks(0) == [] and chunks(5) == [(0, 5)]
    assert [e - s for s, e in chunks(65)] == [16, 32, 1, 16]
    sizes = [e - s for s, e in chunks(3720)]
    assert sizes[:5] == [16, 32, 64, 128, MAX_CHUNK] and sizes[-4:] == [128, 64, 32, 16]
    assert max(sizes) == MAX_CHUNK and sum(sizes) == 3720
    for n in (1, 17, 100, 3720, 37_560):
        spans = chunks(n)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in pairwise(spans))
