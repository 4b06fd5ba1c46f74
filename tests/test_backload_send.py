"""Back-load sends against a real FHIR R4 server on loopback (medplum), in Millennium and generic modes."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from pipelines.backload.client import RetryPolicy, Target, Transient
from pipelines.backload.journal import folder as journal_folder
from pipelines.backload.runner import AuthOptions, backload_status, plan_backload, send_backload
from pipelines.backload.send import CapabilityMismatch, SendOptions, last_states
from pipelines.cli import main
from pipelines.common.errors import ExitCode
from pipelines.common.warehouse import open_warehouse
from pipelines.export.web import RemoteError
from tests.backload_builders import build_warehouse, condition, ident, patient, vital
from tests.backload_server import FhirServer

FAST = RetryPolicy(tries=4, initial=0.01, max_wait=0.05, timeout=10)
NO_AUTH = AuthOptions(no_auth=True)
ROOT = Path(__file__).parent.parent


def clinic(patients: int = 3) -> list[dict]:
    out: list[dict] = [
        {"resourceType": "Organization", "id": "org1", "name": "General", "identifier": [ident("O1")]},
        {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "D"}], "identifier": [ident("D1")]},
    ]
    for n in range(patients):
        gp = [{"reference": "Practitioner/pr1"}]
        out.append(patient(f"p{n}", f"M{n}", generalPractitioner=gp))
        out.append(vital(f"o{n}a", f"p{n}", "8867-4", f"2024-01-0{n % 9 + 1}T10:00:00Z"))
        out.append(vital(f"o{n}b", f"p{n}", "8310-5", f"2024-01-0{n % 9 + 1}T11:00:00Z"))
        out.append(condition(f"c{n}", f"p{n}"))
    return out


def _send(wh, server, profile="millennium-r4", **kw) -> dict:
    opts = SendOptions(concurrency=kw.pop("concurrency", 4), **kw)
    return send_backload(wh, profile, server.base, NO_AUTH, opts, FAST).counts


def _references_resolve(server: FhirServer, resources: list[dict]) -> int:
    checked = 0
    for r in resources:
        for key in ("subject", "patient"):
            if key in r:
                rtype, rid = r[key]["reference"].split("/")
                assert server.search(f"{rtype}?_id={rid}"), "a reference does not resolve on the server"
                checked += 1
    return checked


@pytest.mark.parametrize("mode,profile", [("millennium", "millennium-r4"), ("generic", "generic-r4")])
def test_send_then_resend_sends_nothing(tmp_path, mode, profile):
    wh = build_warehouse(tmp_path / "w.duckdb", clinic(3))
    plan_backload(wh, profile, tmp_path / "out")
    with FhirServer(mode) as server:
        counts = _send(wh, server, profile)
        assert counts == {"created": 14}
        assert len(server.search("Patient")) == 3 and len(server.search("Observation")) == 6
        assert _references_resolve(server, server.search("Observation") + server.search("Condition")) == 9
        writes = server.writes()
        # Millennium: one POST per resource; generic: transactions of 8 whose references are urn:uuid.
        assert writes == (14 if mode == "millennium" else 2)
        assert _send(wh, server, profile) == {}  # the same plan again: nothing to send
        plan_backload(wh, profile, tmp_path / "out")  # a re-plan sees everything unchanged
        assert _send(wh, server, profile) == {}
        assert server.writes() == writes
    status = backload_status(wh, profile)
    assert status["totals"]["unchanged"] == 14 and status["reconciles"] and status["complete"]
    with open_warehouse(wh, read_only=True) as con:
        ids = con.execute(
            "SELECT count(DISTINCT warehouse_id) FROM ops.backload_ids WHERE target = ?", [profile]
        )
        assert ids.fetchone()[0] == 14


def test_capability_mismatch_stops_before_any_write(tmp_path, capsys):
    wh = build_warehouse(tmp_path / "w.duckdb", clinic(1))
    plan_backload(wh, "millennium-r4", tmp_path / "out")
    with FhirServer("millennium", omit="Observation:create,Condition:create") as server:
        with pytest.raises(CapabilityMismatch) as caught:
            _send(wh, server)
        assert caught.value.missing == [("Condition", "create"), ("Observation", "create")]
        args = [
            "backload",
            "send",
            "--warehouse",
            str(wh),
            "--server",
            server.base,
            "--no-auth",
            "--no-progress",
        ]
        assert main(args) == ExitCode.BACKLOAD_CAPABILITY == 11
        assert server.writes() == 0
    err = capsys.readouterr().err
    assert "Observation" in err and "create" in err and "nothing was written" in err
    with open_warehouse(wh, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ops.backload_results").fetchone()[0] == 0


def test_transient_failures_are_retried_and_a_refused_write_is_resent_alone(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", clinic(1))
    plan_backload(wh, "millennium-r4", tmp_path / "out")
    with FhirServer("millennium") as server:
        server.faults(status=429, count=2, retryAfter=0)
        # Organization first: two 429s (Retry-After honoured), then created on the third try.
        counts = send_backload(
            wh, "millennium-r4", server.base, NO_AUTH, SendOptions(concurrency=1), FAST
        ).counts
        assert counts == {"created": 6}
        server.faults(status=0, count=0)
        with open_warehouse(wh, read_only=True) as con:
            attempts = con.execute(
                "SELECT attempts FROM ops.backload_results "
                "WHERE resource_type = 'Organization' AND state = 'created'"
            ).fetchall()
        assert attempts == [(3,)]
    wh2 = build_warehouse(tmp_path / "w2.duckdb", clinic(1))
    plan_backload(wh2, "millennium-r4", tmp_path / "out2")
    with FhirServer("millennium") as server:
        server.faults(status=400, count=1)
        counts = send_backload(
            wh2, "millennium-r4", server.base, NO_AUTH, SendOptions(concurrency=1), FAST
        ).counts
        # The Organization is refused once (4xx: no retry); everything else still goes.
        assert counts == {"created": 5, "failed": 1}
        status = backload_status(wh2, "millennium-r4")
        assert status["totals"]["failed"] == 1 and status["reconciles"] and status["complete"]
        with open_warehouse(wh2, read_only=True) as con:
            row = con.execute(
                "SELECT resource_type, http_status, issue_codes, attempts FROM ops.backload_results "
                "WHERE state = 'failed'"
            ).fetchall()
        assert row == [("Organization", 400, "transient", 1)]
        assert _send(wh2, server) == {}  # a plain re-run leaves the failed write alone
        assert _send(wh2, server, failed_only=True) == {"created": 1}  # re-sent alone
        assert len(server.search("Organization")) == 1
    assert backload_status(wh2, "millennium-r4")["totals"]["failed"] == 0


def test_millennium_server_refuses_what_the_profile_says(tmp_path):
    """The server itself enforces the profile: what the plan would never send is answered 422."""
    with FhirServer("millennium") as server:
        target = Target(server.base, None, no_auth=True, policy=FAST)
        mixed = vital("x", "p0")
        mixed["code"]["coding"].append({"system": "https://fhir.cerner.com/t/codeSet/72", "code": "1"})
        social = vital("y", "p0", category=[{"coding": [{"code": "social-history"}]}])
        assert target.request("POST", "Observation", mixed).status == 422
        assert target.request("POST", "Observation", social).status == 422
        assert target.request("POST", "Patient", patient("p", "M", deceasedBoolean=True)).issue_codes == [
            "business-rule"
        ]
        assert target.request("POST", "", {"resourceType": "Bundle", "type": "transaction"}).status == 422
        conditional = target.request(
            "POST", "Patient", patient("p", "M"), {"If-None-Exist": "identifier=a|b"}
        )
        assert conditional.status == 422
        server.faults(status=503, count=2)
        org = {"resourceType": "Organization", "name": "O"}
        assert target.request("POST", "Organization", org).attempts == 3  # 5xx retried
        server.faults(status=500, count=10)
        with pytest.raises(Transient) as gave_up:
            target.request("POST", "Organization", org)
        assert gave_up.value.status == 500 and server.faults(count=0)["writes"] == 1  # 4 tries, then stop
        created = target.request("POST", "Patient", patient("given-id", "M"))
        assert (
            created.status == 201 and created.body is None and "given-id" not in created.headers["location"]
        )
        target.close()


def test_no_auth_only_on_loopback_and_clear_remote_failures(tmp_path, capsys, caplog):
    with pytest.raises(RemoteError, match="loopback"):
        Target("https://ehr.example.org/fhir", None, no_auth=True)
    wh = build_warehouse(tmp_path / "w.duckdb", clinic(1))
    plan_backload(wh, "millennium-r4", tmp_path / "out")
    caplog.set_level(logging.DEBUG)
    base = ["backload", "send", "--warehouse", str(wh), "--no-progress"]
    with FhirServer("millennium") as server:
        dead = server.base
    assert main([*base, "--server", dead, "--no-auth"]) == ExitCode.REMOTE
    assert "cannot be reached" in capsys.readouterr().err
    assert main([*base, "--server", "http://ehr.example.org/fhir", "--no-auth"]) == ExitCode.REMOTE
    with FhirServer("millennium") as server:
        server.faults(garbage=1)  # the CapabilityStatement request gets an HTML page
        assert main([*base, "--server", server.base, "--no-auth"]) == ExitCode.REMOTE
        assert "not FHIR JSON" in capsys.readouterr().err
        assert server.writes() == 0
    for record in caplog.records:
        for value in ("M0", "Test", "8867-4", "p0"):
            assert value not in record.getMessage()


def test_smart_backend_services_auth(tmp_path, capsys):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.bulk_server import BulkServer
    from tests.test_export_auth import _jwks

    key, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    key_file, wrong_file = tmp_path / "private.jwks.json", tmp_path / "wrong.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(key, "k1", "RS384", True)))
    wrong_file.write_bytes(orjson.dumps(_jwks(other, "k1", "RS384", True)))
    wh = build_warehouse(tmp_path / "w.duckdb", clinic(1))
    plan_backload(wh, "millennium-r4", tmp_path / "out")
    with BulkServer({}, require_auth=True) as tokens:
        tokens.register_client("ehrlift-backload", _jwks(key, "k1", "RS384", False))
        with FhirServer("millennium", introspect=tokens.origin + "/auth/introspect") as server:
            base = ["backload", "send", "--warehouse", str(wh), "--server", server.base, "--no-progress"]
            base += ["--client-id", "ehrlift-backload", "--token-url", tokens.token_url]
            assert main([*base, "--key", str(wrong_file)]) == ExitCode.REMOTE
            err = capsys.readouterr().err
            assert "token" in err and server.writes() == 0
            assert main([*base, "--no-auth"]) == ExitCode.CONFIG  # not both
            assert main([*base, "--key", str(key_file)]) == 0
            assert server.writes() == 6 and "created 6" in capsys.readouterr().out
            assert httpx.get(server.base + "/Patient").status_code == 401  # the server does check tokens


def _sender(wh, server: FhirServer) -> subprocess.Popen:
    code = "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["backload", "send", "--warehouse", str(wh), "--server", server.base, "--no-auth", "--no-progress"]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args, "--concurrency", "4"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _settle(server: FhirServer) -> None:
    """Wait (bounded) until the server's write count stops moving: a killed client's requests finish."""
    last = -1
    for _ in range(100):
        count = server.writes()
        if count == last:
            return
        last = count
        time.sleep(0.3)


def _wait_for_writes(server: FhirServer, proc: subprocess.Popen, at_least: int) -> None:
    for _ in range(600):  # bounded: 60 s
        if proc.poll() is not None or server.writes() >= at_least:
            return
        time.sleep(0.1)


def test_killed_sender_resumes_with_exactly_one_resource_per_create(tmp_path):
    patients = 20
    planned = 2 + 4 * patients
    wh = build_warehouse(tmp_path / "w.duckdb", clinic(patients))
    plan_id = plan_backload(wh, "millennium-r4", tmp_path / "out").plan_id
    with FhirServer("millennium") as server:
        server.faults(delayMs=60)  # slow writes, so each kill lands with requests in flight
        for kill in range(3):
            proc = _sender(wh, server)
            _wait_for_writes(server, proc, server.writes() + 5)
            proc.kill()  # SIGKILL: no clean-up of any kind
            proc.wait(timeout=30)
            _settle(server)
            if kill == 0:  # the send wrote its journal, not the warehouse: intents are on disk
                assert (journal_folder(wh) / f"{plan_id}.jnl").read_bytes().count(b"\nI\t") >= 5
                with open_warehouse(wh, read_only=True) as con:
                    assert con.execute("SELECT count(*) FROM ops.backload_results").fetchone()[0] == 0
        proc = _sender(wh, server)
        # Counted once the killed sender's last requests are done: these writes are the new sender's own,
        # so Ctrl-C reaches it inside its send loop, not while it is still starting.
        _wait_for_writes(server, proc, server.writes() + 3)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: in-flight writes finish and are recorded
        assert proc.wait(timeout=60) == ExitCode.INTERRUPTED
        assert b"resume" in proc.stderr.read()
        assert server.writes() < planned  # stopped part-way
        with open_warehouse(wh, read_only=True) as con:
            states = last_states(con, plan_id)
        server.faults(delayMs=0)
        _send(wh, server)
        counts = {t: len(server.search(t)) for t in ("Organization", "Practitioner", "Patient", "Condition")}
        assert counts == {"Organization": 1, "Practitioner": 1, "Patient": patients, "Condition": patients}
        assert len(server.search("Observation")) == 2 * patients
        checked = _references_resolve(server, server.search("Observation") + server.search("Condition"))
        assert checked == 3 * patients
        assert server.writes() == planned  # no write went twice
    status = backload_status(wh, "millennium-r4")
    assert status["totals"]["created"] == planned and status["complete"] and status["reconciles"]
    with open_warehouse(wh, read_only=True) as con:
        resolved = con.execute(
            "SELECT count(*) FROM ops.backload_results WHERE state = 'resolved'"
        ).fetchone()[0]
    assert resolved >= 1  # a kill left creates in doubt that were found on the server, not sent again
    assert not list(journal_folder(wh).glob("*.jnl"))  # every journal was folded and removed
    # Ctrl-C let the writes in flight finish and recorded them: nothing was left in doubt by it.
    assert "intent" not in {state for state, _at in states.values()}


def test_generic_in_doubt_creates_are_found_by_their_tag(tmp_path, capsys):
    wh = build_warehouse(tmp_path / "w.duckdb", clinic(2))
    plan_backload(wh, "generic-r4", tmp_path / "out")
    with FhirServer("generic") as server:
        assert _send(wh, server, "generic-r4") == {"created": 10}
        # As if the sender died after the server answered: only the intents and no server ids survive.
        with open_warehouse(wh) as con:
            con.execute("DELETE FROM ops.backload_results WHERE state <> 'intent'")
            con.execute("DELETE FROM ops.backload_ids")
        assert _send(wh, server, "generic-r4") == {"resolved": 10}
        assert server.writes() == 2 and len(server.search("Patient")) == 2
    assert main(["backload", "status", "--warehouse", str(wh), "--profile", "generic-r4"]) == 0
    out = capsys.readouterr().out
    assert "reconciles: yes" in out and "total" in out


def test_a_timed_out_create_is_never_sent_twice(tmp_path):
    """A plain create that timed out may still be made by the server: it is in doubt, not retried, and
    the next run finds it by search instead of creating a second copy."""
    wh = build_warehouse(tmp_path / "w.duckdb", clinic(1))
    plan_backload(wh, "millennium-r4", tmp_path / "out")
    slow = RetryPolicy(tries=4, initial=0.01, max_wait=0.05, timeout=0.3)
    with FhirServer("millennium") as server:
        server.faults(delayMs=900, delayCount=1)  # the Organization's create outlives the client's timeout
        opts = SendOptions(concurrency=1)
        counts = send_backload(wh, "millennium-r4", server.base, NO_AUTH, opts, slow).counts
        assert counts == {"created": 5, "in_doubt": 1}
        assert backload_status(wh, "millennium-r4")["totals"]["pending"] == 1
        for _ in range(50):  # bounded: the server finishes the slow create
            if server.search("Organization"):
                break
            time.sleep(0.1)
        assert _send(wh, server) == {"resolved": 1}
        assert len(server.search("Organization")) == 1 and server.writes() == 6
    assert backload_status(wh, "millennium-r4")["complete"]
