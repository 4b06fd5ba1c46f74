"""CDS Hooks service plumbing: patient resolution, absent contract tables, busy warehouse, audit merge."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import httpx
import pytest

from pipelines.cds import config as cds_config
from pipelines.cds.app import create_app
from pipelines.cds.audit import Spool, merge
from pipelines.common.errors import WarehouseError
from pipelines.report import write_report
from tests.cds_builders import MRN_SYSTEM, Client, free_socket, issues_warehouse, service, write_config
from tests.cds_requests import REVIEW, call, cards_of, patient_view


def review(base: str, client: Client, body: dict) -> list[dict]:
    return cards_of(call(base, client, REVIEW, body))


class _Fhir(BaseHTTPRequestHandler):
    """A client FHIR server: Patient/ehr-5 answers with p1's MRN if the bearer token is right."""

    delay = 0.0
    seen: tuple = ()

    def do_GET(self) -> None:
        type(self).seen += ((self.path, self.headers.get("Authorization")),)
        time.sleep(self.delay)
        if self.path == "/fhir/Patient/ehr-5" and self.headers.get("Authorization") == "Bearer fhir-token":
            body = {
                "resourceType": "Patient",
                "id": "ehr-5",
                "identifier": [{"system": MRN_SYSTEM, "value": "1001"}],
            }
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fhir_server():
    handler = type("F", (_Fhir,), {"seen": (), "delay": 0.0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()
    thread.join(timeout=10)


def test_fhir_server_fallback_only_without_prefetch_and_with_a_timeout(tmp_path, fhir_server):
    handler, fhir = fhir_server
    wh = tmp_path / "wh.duckdb"
    issues_warehouse(wh)
    client = Client.rsa()
    auth = {
        "access_token": "fhir-token",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "user/Patient.read",
        "subject": "ehrlift",
    }
    with service(tmp_path, wh, client, fhir_timeout_seconds=0.5) as base:
        fetched = review(base, client, patient_view("ehr-5", fhirServer=fhir, fhirAuthorization=auth))
        prefetched = review(
            base,
            client,
            patient_view(
                "ehr-5",
                fhirServer=fhir,
                fhirAuthorization=auth,
                prefetch={"patient": {"resourceType": "Patient"}},
            ),
        )
        handler.delay = 2.0
        url = f"{base}/cds-services/{REVIEW}"
        slow = httpx.post(
            url,
            json=patient_view("ehr-5", fhirServer=fhir, fhirAuthorization=auth),
            timeout=10,
            headers={"Authorization": f"Bearer {client.token(url)}"},
        )
    assert {c["source"]["topic"]["code"] for c in fetched} >= {"unmapped_code", "migration_summary"}
    assert prefetched == []  # a prefetched Patient without identifiers: nobody to match
    assert slow.status_code == 412  # a server too slow: the data needed could not be had
    assert handler.seen[0] == ("/fhir/Patient/ehr-5", "Bearer fhir-token") and len(handler.seen) == 2


def test_works_without_identity_and_backload_tables(tmp_path):
    wh = tmp_path / "wh.duckdb"
    issues_warehouse(wh, identity=False, backload=False)
    client = Client.rsa()
    mrn = {"patient": {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": "1001"}]}}
    with service(tmp_path, wh, client) as base:
        url = f"{base}/cds-services/{REVIEW}"
        by_backload_id = httpx.post(
            url,
            json=patient_view("EHR-77"),
            timeout=10,
            headers={"Authorization": f"Bearer {client.token(url)}"},
        )
        by_mrn = review(base, client, patient_view("EHR-77", prefetch=mrn))
        wrong_system = review(
            base,
            client,
            patient_view(
                "EHR-77",
                prefetch={
                    "patient": {
                        "resourceType": "Patient",
                        "identifier": [{"system": "urn:other", "value": "1001"}],
                    }
                },
            ),
        )
    assert by_backload_id.status_code == 412  # no back-load map, no prefetch, no FHIR server
    assert wrong_system == []
    codes = [c["source"]["topic"]["code"] for c in by_mrn]
    assert "identity_review" not in codes and "duplicate_fact" not in codes and "unmapped_code" in codes


def test_person_map_joins_source_patients_into_one_chart(tmp_path):
    wh = tmp_path / "wh.duckdb"
    issues_warehouse(wh)
    con = duckdb.connect(str(wh))
    con.execute("INSERT INTO ops.person_map VALUES ('p1', 'P', TRUE, 'r'), ('p2', 'P', FALSE, 'r')")
    con.close()
    client = Client.rsa()
    mrn2 = {"patient": {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": "1002"}]}}
    with service(tmp_path, wh, client) as base:
        cards = review(base, client, patient_view("x", prefetch=mrn2))
    summary = next(c for c in cards if c["source"]["topic"]["code"] == "migration_summary")
    assert "Condition 3" in summary["detail"] and "Patient 2" in summary["detail"]


def _refreshed_state(tmp_path, wh):
    """The service state of a small issues warehouse, its first snapshot taken (no server started)."""
    issues_warehouse(wh)
    cfg = cds_config.load(
        write_config(tmp_path, "http://127.0.0.1:1", Client.rsa()), warehouse=wh, host=None, port=None
    )
    state = create_app(cfg).state.cds
    state.refresh()
    return state


def test_busy_warehouse_keeps_the_last_snapshot_and_the_spool(tmp_path):
    wh = tmp_path / "wh.duckdb"
    state = _refreshed_state(tmp_path, wh)
    first = state.snapshot
    state.spool.append("invocation", issuer="i", hook="patient-view", service=REVIEW, cards=0, issued=[])
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); "
            "c.execute('CREATE TABLE IF NOT EXISTS ops.busy AS SELECT 1'); "
            "print('ok', flush=True); time.sleep(60)",
            str(wh),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ok"
        state.refresh()
        assert state.snapshot is first and state.config.spool_path.exists()
        with pytest.raises(WarehouseError, match="open"):
            merge(state.config.spool_path, wh)
    finally:
        writer.kill()
        writer.wait(timeout=30)
    state.refresh()
    assert state.snapshot is not first and state.snapshot.generation == 2
    queued = [json.loads(line)["kind"] for line in state.config.spool_path.read_text().splitlines()]
    assert queued == ["snapshot"]  # the merged invocation left; the new snapshot's own audit row waits
    con = duckdb.connect(str(wh), read_only=True)
    kinds = con.execute("SELECT detail->>'$.kind' FROM ops.phi_access WHERE command = 'cds-hooks' ORDER BY 1")
    assert kinds.fetchall() == [("invocation",), ("snapshot",)]


def test_merge_repeated_after_a_crash_adds_nothing_twice(tmp_path):
    wh = tmp_path / "wh.duckdb"
    issues_warehouse(wh)
    spool = Spool(tmp_path / "s.jsonl")
    spool.append(
        "invocation",
        issuer="i",
        hook="patient-view",
        service=REVIEW,
        cards=1,
        issued=[{"uuid": "u1", "type": "unmapped_code", "indicator": "warning"}],
    )
    spool.append("feedback", service=REVIEW, card="u1", outcome="accepted", accepted=1)
    saved = spool.path.read_bytes()
    assert merge(spool.path, wh) == 2
    (tmp_path / "s.jsonl.merging").write_bytes(saved)  # as if the process died after the commit
    assert merge(spool.path, wh) == 2
    con = duckdb.connect(str(wh), read_only=True)
    assert con.execute("SELECT count(*) FROM ops.cds_cards").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM ops.cds_feedback").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM ops.phi_access WHERE command = 'cds-hooks'").fetchone()[0] == 1
    con.close()
    report = write_report(wh, tmp_path / "report")
    data = json.loads(report.data.read_text())
    assert data["cds_feedback"] == [
        {
            "service": REVIEW,
            "card_type": "unmapped_code",
            "issued": 1,
            "accepted": 1,
            "overridden": 0,
            "overridden_with_reason": 0,
        }
    ]
    assert "cds-feedback-table" in report.html.read_text()


def test_serve_command_answers_over_loopback(tmp_path):
    wh = tmp_path / "wh.duckdb"
    issues_warehouse(wh)
    client = Client.rsa()
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # the command binds it itself
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, base, client)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pipelines.cli import main; raise SystemExit(main())",
            "cds-hooks",
            "serve",
            "--port",
            str(port),
            "--warehouse",
            str(wh),
            "--config",
            str(config),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        resp = None
        for _ in range(300):
            try:
                url = f"{base}/cds-services"
                resp = httpx.get(url, headers={"Authorization": f"Bearer {client.token(url)}"}, timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert resp is not None and resp.status_code == 200
        assert len(resp.json()["services"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_rules_are_checked_and_unresolved_calls_log_no_values(tmp_path, caplog):
    from pipelines.cds.rules import Rules
    from pipelines.common.errors import ConfigError

    bad = tmp_path / "rules.json"
    rules = Rules.load()
    data = dict(rules.data, rules=[*rules.data["rules"], {"card_type": "no_such_card", "indicator": "info"}])
    bad.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown card type"):
        Rules.load(bad)
    assert rules.indicator("unmapped_code", "AllergyIntolerance") == "critical"
    from pipelines.cds.review import Findings, Item, cards

    quiet = Rules(dict(rules.data, summary_without_findings=False))
    clean = Findings("p", run_id="r", total=3, sources=["legacy"], counts={"Condition": 3})
    assert cards(clean, quiet, None, {"label": "x"}) == []
    assert [t for t, _ in cards(clean, rules, None, {"label": "x"})] == ["migration_summary"]
    clean.add(Item("duplicate_fact", "Observation", "Observation recorded twice", "rule", "info"))
    assert [t for t, _ in cards(clean, quiet, None, {"label": "x"})] == [
        "migration_summary",
        "duplicate_fact",
    ]
    assert rules.indicator("unmapped_code", "Condition") == "warning"
    wh = tmp_path / "wh.duckdb"
    issues_warehouse(wh)
    client = Client.rsa()
    with caplog.at_level("INFO", logger="pipelines.cds"), service(tmp_path, wh, client) as base:
        mrn = {
            "patient": {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": "424242"}]}
        }
        assert review(base, client, patient_view("EHR-SECRET-ID", prefetch=mrn)) == []
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "patient-view: no cards, the patient was not resolved (unmatched_identifier)" in logged
    assert "424242" not in logged and "EHR-SECRET-ID" not in logged


def test_merge_audit_command_and_ambiguous_identifiers(tmp_path):
    from pipelines.cli import main

    wh = tmp_path / "wh.duckdb"
    issues_warehouse(wh)
    con = duckdb.connect(str(wh))
    # A second source Patient with p1's MRN value under the same system: which person is meant is unclear.
    con.execute(
        "INSERT INTO fhir.\"Patient\" VALUES ('p4', ?, 'legacy', NULL, 'adt-p4', 1, 'r', 'h', NULL, FALSE)",
        [
            json.dumps(
                {
                    "resourceType": "Patient",
                    "id": "p4",
                    "identifier": [{"system": MRN_SYSTEM, "value": "1001"}],
                }
            )
        ],
    )
    con.close()
    client = Client.rsa()
    both = {"patient": {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": "1001"}]}}
    with service(tmp_path, wh, client) as base:
        assert review(base, client, patient_view("x", prefetch=both)) == []
    spool = Spool(Path(f"{wh}.cds-spool.jsonl"))
    spool.append("feedback", service=REVIEW, card="u9", outcome="overridden", accepted=0, reason_code="r")
    assert main(["cds-hooks", "merge-audit", "--warehouse", str(wh)]) == 0
    con = duckdb.connect(str(wh), read_only=True)
    resolved = con.execute(
        "SELECT detail->>'$.resolved_by' FROM ops.phi_access WHERE detail->>'$.kind' = 'invocation'"
    ).fetchall()
    assert resolved == [("ambiguous_identifier",)]
    assert con.execute("SELECT card_uuid, outcome FROM ops.cds_feedback").fetchall() == [("u9", "overridden")]


def test_refresh_sees_a_new_run_and_skips_an_unchanged_warehouse(tmp_path):
    from pipelines.cds.app import call as call_app
    from tests.cds_builders import WarehouseBuilder

    wh = tmp_path / "wh.duckdb"
    state = _refreshed_state(tmp_path, wh)
    first = state.snapshot
    body = patient_view(
        "x",
        prefetch={
            "patient": {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": "2001"}]}
        },
    )
    assert call_app(state, REVIEW, body, "iss") == {"cards": []}
    state.refresh()
    assert state.snapshot is first  # only its own audit rows were merged: no new copy
    w = WarehouseBuilder(wh, new_run=False)  # a later run adds a patient
    w.patient("p7", "2001")
    w.close()
    state.refresh()
    assert state.snapshot is not first
    cards = call_app(state, REVIEW, body, "iss")["cards"]
    assert [c["source"]["topic"]["code"] for c in cards] == ["migration_summary"]
