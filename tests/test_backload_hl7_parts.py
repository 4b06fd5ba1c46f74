"""A large HL7 back-load plan goes in parts of whole patients: the same messages as the plan made whole,
every message acknowledged once, one plan that reconciles, and only a part's resources read at once."""

from __future__ import annotations

import re
import subprocess
import sys

import duckdb
import orjson
import pytest

from pipelines.backload.hl7.journal import folder
from pipelines.backload.hl7.messages import KINDS, SOURCE_TYPE
from pipelines.backload.hl7.parts import cut
from pipelines.backload.hl7.plan import Store, build, build_plan, coder_for, prepare
from pipelines.backload.hl7.runner import Hl7Options, backload_hl7, report_rows
from pipelines.backload.hl7.segments import Header
from tests.backload_builders import build_warehouse
from tests.hl7_peer import Peer
from tests.hl7back_builders import resources

WHEN = "20250101120000+0000"
TYPES = [SOURCE_TYPE[k] for k in KINDS]
_REF = re.compile(r'("reference": ?")([A-Za-z]+)/([^"]+)"')


def _copy(res: list[dict], n: int) -> list[dict]:
    """The resources again with ids and references suffixed -n: another patient with the same history."""
    text = orjson.dumps(res).decode()
    text = _REF.sub(lambda m: f'{m.group(1)}{m.group(2)}/{m.group(3)}-{n}"', text)
    out = orjson.loads(text)
    for r in out:
        r["id"] = f"{r['id']}-{n}"
    return out


def _population(copies: int) -> list[dict]:
    """copies patients' histories (each: a patient merged into another by link, a report of three results,
    immunizations, a document); a report whose subject is missing, one whose subject is no Patient, a
    stand-in Patient, references from one history into another, and merges by link that come round."""
    out = [r for n in range(copies) for r in _copy(resources(), n)]
    report = next(r for r in out if r["resourceType"] == "DiagnosticReport")
    # A result that refers to another patient's report and immunization: read for it, they are not planned
    # again in its part.
    result = next(r for r in out if r["id"] == "o2-0")
    result["derivedFrom"] = [{"reference": f"DiagnosticReport/r1-{copies - 1}"}]
    result["partOf"] = [{"reference": f"Immunization/i1-{copies - 1}"}]
    # A patient with a document only, which refers to another patient's report: its part has no reports
    # of its own and reads that one for the reference, without planning it again.
    patient = next(r for r in out if r["id"] == "p1-0")
    document = next(r for r in out if r["resourceType"] == "DocumentReference")
    out.append({**patient, "id": "solo"})
    related = {"related": [{"reference": f"DiagnosticReport/r1-{copies - 1}"}]}
    out.append({**document, "id": "solo-doc", "subject": {"reference": "Patient/solo"}, "context": related})
    # Links that come round (a -> b -> c -> d -> b): each record's survivor is where its own walk stops, and
    # a part reads every record its patients' walks pass.
    for here, there in (("a", "b"), ("b", "c"), ("c", "d"), ("d", "b")):
        link = [{"other": {"reference": f"Patient/cyc-{there}"}, "type": "replaced-by"}]
        out.append({**patient, "id": f"cyc-{here}", "link": link})
    out.append({**report, "id": "cyc-report", "subject": {"reference": "Patient/cyc-a"}})
    out.append({**report, "id": "lost", "subject": {"reference": "Patient/nobody"}})
    out.append({**report, "id": "odd", "subject": {"reference": "Encounter/e1-0"}})
    out.append({"resourceType": "Patient", "id": "stand-in", "name": [{"family": "Stand"}]})
    return out


def _warehouse(tmp_path, copies: int = 6, person_map: bool = True):
    wh = build_warehouse(tmp_path / "w.duckdb", _population(copies), stand_ins=("stand-in",))
    if person_map:  # identity resolution merged copy 1's patient into copy 0's
        with duckdb.connect(str(wh)) as con:
            con.execute("CREATE TABLE IF NOT EXISTS ops.person_map (patient_id VARCHAR, person_id VARCHAR, "
                        "survivor BOOLEAN, run_id VARCHAR)")  # fmt: skip
            con.execute(
                "INSERT INTO ops.person_map VALUES ('p1-0', 'P', true, 'r'), ('p1-1', 'P', false, 'r')"
            )
    return wh


def _row(p) -> tuple:
    return (p.kind, p.resource_type, p.warehouse_id, p.patient_id, p.status, p.reason, p.detail, p.control_id,
            p.message_type, p.content_sha256, p.text)  # fmt: skip


@pytest.mark.parametrize("size", [1, 7, 25])
def test_a_plan_in_parts_has_the_messages_of_the_whole_plan(tmp_path, size):
    wh = _warehouse(tmp_path)
    with duckdb.connect(str(wh), read_only=True) as con:
        args = (con, "millennium-r4", list(KINDS), Header(), WHEN, {}, tmp_path)
        whole = build_plan(*args)
        parts = cut(con, TYPES, size)
        coder = coder_for(con, "millennium-r4")
        got, placed, first = [], {}, 1
        for part in parts:
            prep = prepare(*args, part=part, first=first, coder=coder)
            for w in prep.work:
                got.append(build(prep, *w))
                placed[(got[-1].kind, got[-1].warehouse_id)] = part.number
            first += len(prep.work)
    assert len(parts) > 1 and [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert sorted(map(_row, got)) == sorted(map(_row, whole))
    assert [p.seq for p in got] == list(range(1, len(whole) + 1))
    sendable = [(p.kind, p.warehouse_id) for p in whole if p.status == "send"]
    assert [(p.kind, p.warehouse_id) for p in got if p.status == "send"] == sendable  # the same order
    # A patient's messages are in one part; those with no patient in the last.
    for patient in {p.patient_id for p in got if p.patient_id}:
        assert len({placed[(p.kind, p.warehouse_id)] for p in got if p.patient_id == patient}) == 1
    assert placed[("oru", "lost")] == placed[("oru", "odd")] == len(parts)
    odd = next(p for p in got if p.warehouse_id == "odd")
    assert (odd.status, odd.reason) == ("not_sendable", "hl7_reference_missing")


def test_a_part_reads_only_its_patients_and_what_they_refer_to(tmp_path):
    wh = _warehouse(tmp_path, person_map=False)
    with duckdb.connect(str(wh), read_only=True) as con:
        parts = cut(con, TYPES, 6)  # a patient's six messages a part
        part = next(p for p in parts if "p1-0" in p.ids["Patient"])
        first = Store(con, [*TYPES, "Observation", "Encounter", "Practitioner"], part)
    keys = set(first.raw)
    # Copy 0's patient (p1-0, and p0-0 merged into it by link): its records and what they refer to.
    assert {"Patient/p0-0", "Patient/p1-0"} <= keys
    assert {"Observation/o1-0", "Observation/o2-0", "Observation/o3-0", "Encounter/e1-0"} <= keys
    assert not any(k.endswith("-1") or k.endswith("-5") for k in keys)


def test_a_plan_no_larger_than_a_part_is_planned_whole(tmp_path):
    wh = _warehouse(tmp_path, copies=1)
    with duckdb.connect(str(wh), read_only=True) as con:
        assert cut(con, TYPES, 1000) == []


def test_a_send_in_parts_acknowledges_every_message_once_in_one_plan(tmp_path):
    wh = _warehouse(tmp_path)
    whole_wh = _warehouse(tmp_path / "whole")
    with Peer() as peer:
        result = backload_hl7(wh, Hl7Options(to=f"127.0.0.1:{peer.port}", part_size=7))
        received = list(peer.received)
    with Peer() as peer:
        whole = backload_hl7(whole_wh, Hl7Options(to=f"127.0.0.1:{peer.port}"))
    counts = ("send", "not_sendable", "unchanged", "sent", "done", "failed")
    assert {k: result[k] for k in counts} == {k: whole[k] for k in counts} and result["failed"] == 0
    assert len(received) == len(set(received)) == result["done"] == result["sent"]
    assert not list(folder(wh).glob("*.jnl"))
    query = (
        "SELECT kind, warehouse_id, status, reason, contains(message, '|' || control_id || '|') "
        "FROM ops.backload_hl7_messages ORDER BY kind, warehouse_id"
    )
    with duckdb.connect(str(wh), read_only=True) as con, duckdb.connect(str(whole_wh), read_only=True) as w:
        assert con.execute(query).fetchall() == w.execute(query).fetchall()
        plans, seqs, n = con.execute(
            "SELECT count(DISTINCT plan_id), count(DISTINCT seq), count(*) FROM ops.backload_hl7_messages"
        ).fetchone()
        assert plans == 1 and seqs == n
        results = con.execute(
            "SELECT count(*), count(DISTINCT seq) FROM ops.backload_hl7_results WHERE state = 'done'"
        ).fetchone()
        assert results == (result["done"], result["done"])
        (section,) = report_rows(con, "run-1")
    assert section["reconciles"] and sum(k["done"] for k in section["kinds"]) == result["done"]


def test_planning_in_parts_stores_one_plan_named_by_its_content(tmp_path):
    wh = _warehouse(tmp_path)
    first = backload_hl7(wh, Hl7Options(to=None, part_size=5))
    again = backload_hl7(wh, Hl7Options(to=None, part_size=5))
    assert first == again and first["send"] > 0
    with duckdb.connect(str(wh), read_only=True) as con:
        assert con.execute("SELECT DISTINCT plan_id FROM ops.backload_hl7_messages").fetchall() == [
            (first["plan_id"],)
        ]


def test_a_send_in_parts_never_imports_pandas(tmp_path):
    """pa.array over Python lists makes pyarrow import pandas (a quarter of a second inside the send, and
    about 45 MB): the back-load builds its Arrow tables from buffers (pipelines.common.arrow)."""
    wh = _warehouse(tmp_path)
    with Peer() as peer:
        code = (
            "import sys\nfrom pathlib import Path\n"
            "from pipelines.backload.hl7.runner import Hl7Options, backload_hl7\n"
            f"result = backload_hl7(Path({str(wh)!r}), Hl7Options(to='127.0.0.1:{peer.port}', part_size=7))\n"
            "print(result['failed'], result['done'] > 0, 'pandas' in sys.modules)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0", "True", "False"]
