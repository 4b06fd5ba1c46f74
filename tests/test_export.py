"""`ehrlift export` against a Bulk Data server on loopback: protocol, failures, resume, _since, auth."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pipelines.cli import main
from pipelines.common.errors import ExitCode
from pipelines.export.auth import BackendAuth, load_signing_key
from pipelines.export.client import BulkClient, Timing
from pipelines.export.runner import ExportOptions, run_export
from pipelines.export.state import ExportState
from pipelines.export.web import RemoteError, is_loopback, require_secure, retry_after_seconds
from tests.bulk_server import BulkServer, Faults, corpus_resources, generated_resources

FAST = Timing(poll_min=0.0, poll_max=5.0, max_wait=60.0, retry_base=0.0, retry_max=5.0, attempts=4)
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


class Sleeps(list):
    """Records the waits the client asks for instead of sleeping: tests never depend on the clock."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def options(server: BulkServer, tmp_path: Path, **kwargs) -> ExportOptions:
    kwargs.setdefault("scope", "system")
    kwargs.setdefault("run", False)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("timing", FAST)
    return ExportOptions(server=server.base, warehouse=tmp_path / "data" / "warehouse.duckdb", **kwargs)


def file_gets(server: BulkServer) -> Counter[str]:
    return Counter(p.rsplit("/", 1)[1] for p in server.requests("GET", "/files/"))


@pytest.fixture
def data() -> dict[str, list[dict]]:
    return generated_resources(5, T0)


# -- the protocol ------------------------------------------------------------------------------------


def test_system_export_downloads_every_file_and_deletes_the_job(tmp_path, data):
    with BulkServer(data) as server:
        sleeps = Sleeps()
        result = run_export(options(server, tmp_path), sleep=sleeps)
        assert server.requests("GET", "/fhir/") == ["/fhir/$export"]
        assert len(server.requests("GET", "/jobs/")) == 2  # one 202, then the manifest
        assert server.requests("DELETE") == server.requests("GET", "/jobs/")[:1]
        assert file_gets(server) == Counter(
            {"Condition.ndjson": 1, "Encounter.ndjson": 1, "Observation.ndjson": 1, "Patient.ndjson": 1}
            | {"errors.ndjson": 1}
        )
    assert sleeps == [1.0]  # Retry-After: 1 on the one 202
    assert result.resources == Counter({"Condition": 5, "Encounter": 5, "Observation": 10, "Patient": 5})
    assert result.files == Counter({"output": 4, "error": 1})
    assert result.error_issues == Counter({"warning/processing": 1})
    assert result.deleted_on_server
    local = orjson.loads((result.out_dir / "manifest.json").read_bytes())
    assert [e["url"] for e in local["output"]] == [
        "Condition.001.ndjson",
        "Encounter.001.ndjson",
        "Observation.001.ndjson",
        "Patient.001.ndjson",
    ]
    assert local["error"] == [{"type": "OperationOutcome", "url": "error/OperationOutcome.001.ndjson"}]
    assert (result.out_dir / "Observation.001.ndjson").read_bytes().count(b"\n") == 10
    assert not list(result.out_dir.rglob("*.part"))
    with ExportState(tmp_path / "data" / "exports", options(server, tmp_path).key()) as state:
        assert state.job is None
        assert state.since == result.transaction_time


def test_group_export_with_type_and_type_filter(tmp_path, data):
    with BulkServer(data, groups={"g1": {"p1", "p2"}}) as server:
        opts = options(
            server,
            tmp_path,
            scope="group",
            group="g1",
            types=("Observation", "Patient"),
            type_filters=("Observation?status=final",),
        )
        result = run_export(opts, sleep=Sleeps())
        kickoff = server.requests("GET", "/fhir/")
    assert kickoff == ["/fhir/Group/g1/$export"]
    assert result.resources == Counter({"Observation": 2, "Patient": 2})
    lines = (result.out_dir / "Observation.001.ndjson").read_bytes().splitlines()
    assert {orjson.loads(x)["status"] for x in lines} == {"final"}


def test_kickoff_request_follows_the_ig(data):
    with BulkServer(data) as server:
        url = server.base + "/$export"
        assert httpx.get(url, headers={"Accept": "application/fhir+json"}).status_code == 400
        assert httpx.get(url, headers={"Prefer": "respond-async"}).status_code == 400
        ok = httpx.get(url, headers={"Accept": "application/fhir+json", "Prefer": "respond-async"})
        assert ok.status_code == 202 and ok.headers["Content-Location"].startswith(server.origin + "/jobs/")
        client = BulkClient(server.base, timing=FAST, sleep=Sleeps())
        built = client.kickoff_url(
            "group", "a b/c", "2024-01-01T00:00:00Z", ("Patient",), ("A?x=1,2", "B?y=3")
        )
        client.close()
    assert built == (
        f"{server.base}/Group/a%20b%2Fc/$export?_outputFormat=application%2Ffhir%2Bndjson"
        "&_since=2024-01-01T00%3A00%3A00Z&_type=Patient&_typeFilter=A%3Fx%3D1%2C2&_typeFilter=B%3Fy%3D3"
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"scope": "group", "group": "nope"}, "HTTP 404, OperationOutcome error/not-found"),
        ({"type_filters": ("Observation?code=1",)}, "HTTP 400, OperationOutcome error/not-supported"),
    ],
)
def test_server_refusals_are_coded_messages_without_free_text(tmp_path, data, kwargs, expected):
    with BulkServer(data) as server, pytest.raises(RemoteError) as caught:
        run_export(options(server, tmp_path, **kwargs), sleep=Sleeps())
    assert expected in str(caught.value)
    assert "Group" not in caught.value.message and "code=1" not in str(caught.value)
    assert caught.value.exit_code == ExitCode.REMOTE


def test_polling_honours_retry_after_seconds_date_and_progress(tmp_path, data):
    faults = Faults(polls_before_ready=3, retry_after="date")
    with BulkServer(data, faults=faults) as server:
        sleeps = Sleeps()
        run_export(options(server, tmp_path), sleep=sleeps)
        assert len(server.requests("GET", "/jobs/")) == 4
    # An HTTP-date of "now" asks for no wait; the client still keeps its minimum (0 here) and the date won.
    assert len(sleeps) == 3 and all(0.0 <= s <= 1.0 for s in sleeps)

    faults = Faults(polls_before_ready=2, retry_after=None)
    with BulkServer(data, faults=faults) as server:
        sleeps = Sleeps()
        slow = Timing(poll_min=2.0, poll_max=3.0, max_wait=60, retry_base=0.0, attempts=4)
        run_export(options(server, tmp_path / "b", timing=slow), sleep=sleeps)
    assert sleeps == [3.0, 3.0]  # no Retry-After: backoff from poll_min, capped at poll_max


def test_retry_after_parsing():
    now = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds("Mon, 01 Jan 2024 00:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Sun, 31 Dec 2023 23:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_polling_gives_up_after_max_wait_and_keeps_the_job(tmp_path, data):
    with BulkServer(data, faults=Faults(polls_before_ready=1000)) as server:
        brief = Timing(poll_min=10.0, poll_max=10.0, max_wait=25.0, retry_base=0.0, attempts=3)
        with pytest.raises(RemoteError, match="not done after 25 s"):
            run_export(options(server, tmp_path, timing=brief), sleep=Sleeps())
        polls = len(server.requests("GET", "/jobs/"))
        assert polls == 3  # bounded: 25 s of 10 s waits
        with ExportState(tmp_path / "data" / "exports", options(server, tmp_path).key()) as state:
            assert state.job is not None and state.job["manifest"] is None


@pytest.mark.parametrize(
    ("fault", "kickoffs", "polls"),
    [("kickoff_429", 3, 2), ("status_429", 1, 4), ("status_503", 1, 4), ("status_transient_500", 1, 4)],
)
def test_throttling_and_server_errors_are_retried(tmp_path, data, fault, kickoffs, polls):
    with BulkServer(data, faults=Faults(**{fault: 2})) as server:
        sleeps = Sleeps()
        result = run_export(options(server, tmp_path), sleep=sleeps)
        assert len(server.requests("GET", "/fhir/")) == kickoffs
        assert len(server.requests("GET", "/jobs/")) == polls
    assert sleeps == [0.0, 0.0, 1.0]  # Retry-After: 0 twice, then the job's Retry-After: 1
    assert sum(result.resources.values()) == 25


def test_a_failed_job_is_reported_and_forgotten(tmp_path, data):
    with BulkServer(data, faults=Faults(status_fatal=True)) as server:
        with pytest.raises(RemoteError, match=r"job failed: HTTP 500, OperationOutcome error/exception"):
            run_export(options(server, tmp_path), sleep=Sleeps())
        assert len(server.requests("DELETE")) == 1
        with ExportState(tmp_path / "data" / "exports", options(server, tmp_path).key()) as state:
            assert state.job is None


@pytest.mark.parametrize("fault", ["file_429", "file_503", "file_truncate", "file_drop", "file_short"])
def test_file_failures_are_retried_until_whole(tmp_path, data, fault):
    faults = Faults()
    getattr(faults, fault)["Observation.ndjson"] = 2
    with BulkServer(data, faults=faults) as server:
        sleeps = Sleeps()
        result = run_export(options(server, tmp_path), sleep=sleeps)
        assert file_gets(server)["Observation.ndjson"] == 3
        assert file_gets(server)["Patient.ndjson"] == 1
    body = (result.out_dir / "Observation.001.ndjson").read_bytes()
    assert body == b"".join(orjson.dumps(o) + b"\n" for o in data["Observation"])
    assert result.resources["Observation"] == 10


def test_bulk_data_3_manifest_outcome_files_and_file_size(tmp_path, data):
    faults = Faults(manifest_v3=True)
    faults.file_short["Patient.ndjson"] = 1  # no count in a 3.0 manifest: fileSize catches the cut
    with BulkServer(data, faults=faults) as server:
        result = run_export(options(server, tmp_path), sleep=Sleeps())
        assert file_gets(server)["Patient.ndjson"] == 2
    assert result.files == Counter({"output": 4, "error": 1})
    assert result.resources["Patient"] == 5


def test_manifest_checks():
    from pipelines.export.client import parse_manifest

    base = {"transactionTime": "2024-01-01T00:00:00Z", "requiresAccessToken": False, "output": []}
    with pytest.raises(RemoteError, match="links to further manifests"):
        parse_manifest(
            orjson.dumps({**base, "link": [{"relation": "next", "url": "x"}]}), "https://a.example/s"
        )
    with pytest.raises(RemoteError, match="must use https"):
        parse_manifest(
            orjson.dumps({**base, "output": [{"url": "http://files.example/x"}]}), "https://a.example/s"
        )
    with pytest.raises(RemoteError, match="lacks transactionTime"):
        parse_manifest(orjson.dumps({"output": []}), "https://a.example/s")
    relative = parse_manifest(
        orjson.dumps({**base, "output": [{"type": "Patient", "url": "f/1"}]}), "https://a.example/s/j"
    )
    assert relative.output[0]["url"] == "https://a.example/s/f/1"


def test_a_file_that_keeps_failing_stops_the_export_and_a_rerun_fetches_only_it(tmp_path, data):
    faults = Faults(file_gone={"Encounter.ndjson"})
    with BulkServer(data, faults=faults) as server:
        with pytest.raises(
            RemoteError, match=r"1 of 5 export files could not be downloaded \(export_file_gone 1\)"
        ):
            run_export(options(server, tmp_path), sleep=Sleeps())
        assert server.requests("DELETE") == []  # the job stays on the server for the retry
        faults.file_gone.clear()
        result = run_export(options(server, tmp_path), sleep=Sleeps())
        assert result.resumed and result.fetched_now == 1
        assert file_gets(server) == Counter(
            {"Condition.ndjson": 1, "Encounter.ndjson": 2, "Observation.ndjson": 1, "Patient.ndjson": 1}
            | {"errors.ndjson": 1}
        )
        assert len(server.requests("GET", "/fhir/")) == 1  # the same job, not a new kick-off


class Crash(BaseException):
    """Stands in for the process dying (kill -9 cannot be caught, so nothing after it runs)."""


def test_resume_after_a_crash_mid_download_refetches_nothing_finished(tmp_path, data, monkeypatch):
    original = BulkClient.download
    calls = []

    def dying(self, url, target, *args, **kwargs):
        calls.append(url)
        if len(calls) >= 3:  # from here on the process is dead: nothing else is fetched
            target.with_name(target.name + ".part").write_bytes(
                b'{"resourceType":"Pat'
            )  # a half-written file
            raise Crash
        return original(self, url, target, *args, **kwargs)

    with BulkServer(data) as server:
        monkeypatch.setattr(BulkClient, "download", dying)
        with pytest.raises(Crash):
            run_export(options(server, tmp_path, workers=1), sleep=Sleeps())
        monkeypatch.setattr(BulkClient, "download", original)
        before = file_gets(server)
        assert sum(before.values()) == 2
        result = run_export(options(server, tmp_path, workers=1), sleep=Sleeps())
        after = file_gets(server)
        assert len(server.requests("GET", "/fhir/")) == 1
        assert len(server.requests("GET", "/jobs/")) == 2  # the manifest was kept: no polling again
    assert all(after[name] == 1 for name in after)  # every file fetched exactly once over both runs
    assert result.fetched_now == 3 and result.resumed
    assert not list(result.out_dir.rglob("*.part"))  # the crashed file's partial copy was replaced


def test_resume_after_a_crash_while_polling_keeps_the_job(tmp_path, data):
    def dying(_seconds: float) -> None:
        raise Crash

    with BulkServer(data, faults=Faults(polls_before_ready=1)) as server:
        with pytest.raises(Crash):
            run_export(options(server, tmp_path), sleep=dying)
        result = run_export(options(server, tmp_path), sleep=Sleeps())
        assert len(server.requests("GET", "/fhir/")) == 1
    assert result.resumed and sum(result.resources.values()) == 25


def test_incremental_export_uses_the_last_transaction_time(tmp_path, data):
    with BulkServer(data) as server:
        first = run_export(options(server, tmp_path), sleep=Sleeps())
        later = datetime.now(UTC) + timedelta(seconds=5)
        server.touch("Patient", "p1", later, gender="male")
        server.touch("Observation", "o9-1", later, status="final", subject={"reference": "Patient/p1"})
        server.delete_resource("Condition", "c2", later)
        second = run_export(options(server, tmp_path), sleep=Sleeps())
        kickoffs = [p for m, p, _s, _a in server.log if m == "GET" and p.startswith("/fhir/")]
        assert len(kickoffs) == 2
    assert second.since_used == first.transaction_time
    assert second.resources == Counter({"Observation": 1, "Patient": 1})
    assert second.files["deleted"] == 1
    bundle = orjson.loads((second.out_dir / "deleted" / "Bundle.001.ndjson").read_bytes())
    assert bundle["entry"] == [{"request": {"method": "DELETE", "url": "Condition/c2"}}]
    with ExportState(tmp_path / "data" / "exports", options(server, tmp_path).key()) as state:
        assert state.since == second.transaction_time
        assert [h["since"] for h in state.data["history"]] == [None, first.transaction_time]


def test_since_is_remembered_per_server_and_scope(tmp_path, data):
    with BulkServer(data, groups={"g1": {"p1"}}) as server:
        run_export(options(server, tmp_path), sleep=Sleeps())
        group = run_export(options(server, tmp_path, scope="group", group="g1"), sleep=Sleeps())
        full = run_export(options(server, tmp_path, full=True), sleep=Sleeps())
    assert group.since_used is None and full.since_used is None


# -- landing and the normal pipeline ---------------------------------------------------------------------


def test_export_then_run_loads_the_warehouse(tmp_path, data, warehouse):
    with BulkServer(data) as server:
        result = run_export(options(server, tmp_path, run=True, source_system="ehr-a"), sleep=Sleeps())
    summary = result.run_summary
    assert summary is not None and summary.reconciles
    con = warehouse()
    counts = {
        t: con.execute(f'SELECT count(*) FROM fhir."{t}"').fetchone()[0]
        for t in ("Patient", "Encounter", "Observation", "Condition")
    }
    assert counts == {"Patient": 5, "Encounter": 5, "Observation": 10, "Condition": 5}
    rows = con.execute(
        "SELECT f.format, l.outcome, l.reason, count(*) FROM ops.ledger l "
        "JOIN ops.files f USING (file_sha256) GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert rows == [
        ("fhir-bulk-manifest", "skipped", "manifest_output_landed", 5),
        ("fhir-export-errors", "skipped", "export_error_file", 1),
        ("fhir-ndjson", "converted", None, 25),
    ]
    assert (
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'OperationOutcome'"
        ).fetchone()[0]
        == 0
    )


def test_incremental_run_with_deletes_is_accounted(tmp_path, data, warehouse):
    with BulkServer(data) as server:
        run_export(options(server, tmp_path, run=True), sleep=Sleeps())
        later = datetime.now(UTC) + timedelta(seconds=5)
        server.touch("Patient", "p1", later, gender="male")
        server.delete_resource("Condition", "c2", later)
        second = run_export(options(server, tmp_path, run=True), sleep=Sleeps())
    con = warehouse()
    rows = con.execute(
        "SELECT l.outcome, l.reason, count(*) FROM ops.ledger l WHERE run_id = ? GROUP BY ALL ORDER BY ALL",
        [second.run_summary.run_id],
    ).fetchall()
    # The error file has the same bytes as the first run's: landed once, so no second ledger row.
    assert rows == [
        ("converted", "newer_version", 1),
        ("skipped", "bundle_delete_request", 1),
        ("skipped", "manifest_output_landed", 2),
    ]
    assert con.execute('SELECT count(*) FROM fhir."Patient"').fetchone()[0] == 5


@pytest.mark.corpus
def test_corpus_bulk_export_round_trip(tmp_path, corpus, warehouse):
    folder = corpus / "fhir-r4" / "sample-bulk-fhir-datasets" / "10-patients"
    if not folder.is_dir():
        pytest.skip(f"corpus folder missing: {folder}")
    resources = corpus_resources(folder)
    with BulkServer(resources, faults=Faults(error_file=False)) as server:
        result = run_export(options(server, tmp_path, run=True, workers=3), sleep=Sleeps())
    assert result.resources == Counter({t: len(v) for t, v in resources.items()})
    assert result.run_summary is not None and result.run_summary.reconciles
    con = warehouse()
    for rtype, items in resources.items():
        n = con.execute(f'SELECT count(*) FROM fhir."{rtype}" WHERE NOT reference_only').fetchone()[0]
        assert n == len({r["id"] for r in items}), rtype


def test_cli_export_exit_statuses(tmp_path, data, capsys):
    with BulkServer(data, groups={"g1": {"p1"}}) as server:
        base = ["export", "--server", server.base, "--warehouse", str(tmp_path / "w.duckdb"), "--no-progress"]
        assert main([*base, "--group", "nope", "--max-wait", "5"]) == ExitCode.REMOTE
        assert main([*base, "--group", "g1", "--no-run", "--type", "Patient,Observation"]) == ExitCode.OK
    printed = capsys.readouterr().out
    assert "resources: Observation 2, Patient 1" in printed
    assert "not run (--no-run)" in printed


# -- security rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://fhir.example.org/r4", True),
        ("http://fhir.example.org/r4", False),
        ("http://127.0.0.1:8080/fhir", True),
        ("http://127.9.9.9/fhir", True),
        ("http://[::1]:8080/fhir", True),
        ("http://localhost/fhir", True),
        ("http://10.0.0.1/fhir", False),
        ("ftp://127.0.0.1/x", False),
    ],
)
def test_https_is_required_except_on_loopback(url, allowed):
    if allowed:
        assert require_secure(url, "x") == url
    else:
        with pytest.raises(RemoteError, match="must use https"):
            require_secure(url, "x")


def test_loopback_names():
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("localhost.example.org") and not is_loopback(None)


# -- SMART Backend Services --------------------------------------------------------------------------


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(key, kid: str, alg: str, private: bool) -> dict:
    algo = jwt.algorithms.RSAAlgorithm if alg == "RS384" else jwt.algorithms.ECAlgorithm
    jwk = algo.to_jwk(key if private else key.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": kid, "alg": alg}]}


@pytest.fixture(scope="module")
def keys() -> dict:
    rsa_key = _rsa_key()
    ec_key = ec.generate_private_key(ec.SECP384R1())
    return {"RS384": rsa_key, "ES384": ec_key, "other": _rsa_key()}


def _auth_server(data, keys, **kwargs) -> BulkServer:
    server = BulkServer(data, require_auth=True, **kwargs)
    public = {
        "keys": _jwks(keys["RS384"], "k-rsa", "RS384", False)["keys"]
        + _jwks(keys["ES384"], "k-ec", "ES384", False)["keys"]
    }
    server.register_client("client-1", public)
    return server


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_authenticated_export_reuses_one_token(tmp_path, data, keys, alg):
    kid = "k-rsa" if alg == "RS384" else "k-ec"
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys[alg], kid, alg, True)))
    with _auth_server(data, keys) as server:
        result = run_export(
            options(server, tmp_path, client_id="client-1", key_file=key_file), sleep=Sleeps()
        )
        assert server.requests("GET", "/fhir/.well-known") == ["/fhir/.well-known/smart-configuration"]
        assert server.requests("POST", "/auth/token") == ["/auth/token"]  # one token for the whole export
        assert all(server.with_token("/files/")) and all(server.with_token("/jobs/"))
        assert not any(server.with_token("/auth/"))
    assert sum(result.resources.values()) == 25


def test_files_get_no_token_when_the_manifest_does_not_require_one(tmp_path, data, keys):
    key_file = tmp_path / "k.pem"
    key_file.write_bytes(
        keys["RS384"].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with _auth_server(data, keys, requires_access_token=False) as server:
        opts = options(server, tmp_path, client_id="client-1", key_file=key_file, kid="k-rsa")
        run_export(opts, sleep=Sleeps())
        assert server.with_token("/files/") and not any(server.with_token("/files/"))
        assert all(server.with_token("/fhir/$export"))


def test_a_refused_token_is_refreshed_once(tmp_path, data, keys):
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["RS384"], "k-rsa", "RS384", True)))
    with _auth_server(data, keys, faults=Faults(expire_token=1)) as server:
        result = run_export(
            options(server, tmp_path, client_id="client-1", key_file=key_file, workers=1), sleep=Sleeps()
        )
        statuses = [s for _m, p, s, _a in server.log if p.startswith("/files/")]
        assert statuses.count(401) == 1 and statuses.count(200) == 5
        assert len(server.requests("POST", "/auth/token")) == 2
    assert sum(result.resources.values()) == 25


def test_token_is_refreshed_before_expiry(tmp_path, data, keys):
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["RS384"], "k-rsa", "RS384", True)))
    # A token that lives 30 s is within the 60 s refresh margin at once: each use gets a new one.
    with _auth_server(data, keys, token_lifetime=30) as server:
        run_export(
            options(server, tmp_path, client_id="client-1", key_file=key_file, workers=1), sleep=Sleeps()
        )
        assert len(server.requests("POST", "/auth/token")) > 3
        assert not [s for _m, _p, s, _a in server.log if s == 401]


def _post_assertion(server: BulkServer, assertion: str) -> httpx.Response:
    return httpx.post(
        server.token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.read",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )


def _claims(server: BulkServer, **overrides) -> dict:
    import time

    now = int(time.time())
    claims = {
        "iss": "client-1",
        "sub": "client-1",
        "aud": server.token_url,
        "exp": now + 240,
        "iat": now,
        "jti": "j1",
    }
    claims.update(overrides)
    return claims


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("good", None),
        ("bad-signature", "invalid_client"),
        ("wrong-audience", "invalid_client"),
        ("expired", "invalid_client"),
        ("unknown-kid", "invalid_client"),
        ("rs256", "invalid_client"),
        ("unknown-client", "invalid_client"),
        ("too-long-lived", "invalid_client"),
    ],
)
def test_token_endpoint_checks_the_assertion(data, keys, case, error):
    import time

    with _auth_server(data, keys) as server:
        key, kid, alg, claims = keys["RS384"], "k-rsa", "RS384", _claims(server, jti=case)
        if case == "bad-signature":
            key = keys["other"]
        elif case == "wrong-audience":
            claims["aud"] = server.base
        elif case == "expired":
            claims.update(exp=int(time.time()) - 5, iat=int(time.time()) - 120)
        elif case == "unknown-kid":
            kid = "k-unknown"
        elif case == "rs256":
            alg = "RS256"
        elif case == "unknown-client":
            claims.update(iss="nobody", sub="nobody")
        elif case == "too-long-lived":
            claims["exp"] = claims["iat"] + 3600
        response = _post_assertion(server, jwt.encode(claims, key, algorithm=alg, headers={"kid": kid}))
    if error is None:
        assert response.status_code == 200 and response.json()["token_type"] == "bearer"
    else:
        assert response.status_code in (400, 401) and response.json()["error"] == error


def test_an_assertion_cannot_be_replayed(data, keys):
    with _auth_server(data, keys) as server:
        assertion = jwt.encode(
            _claims(server, jti="once"), keys["RS384"], algorithm="RS384", headers={"kid": "k-rsa"}
        )
        assert _post_assertion(server, assertion).status_code == 200
        again = _post_assertion(server, assertion)
    assert again.status_code in (400, 401) and again.json()["error"] == "invalid_client"


def test_client_assertion_claims(keys):
    key = load_signing_key_from(keys["ES384"], "k-ec", "ES384")
    auth = BackendAuth("client-1", key, "https://auth.example.org/token")
    a, b = auth.assertion(now=1_700_000_000), auth.assertion(now=1_700_000_000)
    header = jwt.get_unverified_header(a)
    claims = jwt.decode(
        a,
        keys["ES384"].public_key(),
        algorithms=["ES384"],
        audience=auth.token_url,
        options={"verify_exp": False},
    )
    assert header == {"alg": "ES384", "kid": "k-ec", "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == "client-1"
    assert claims["exp"] - claims["iat"] == 300
    assert jwt.decode(b, options={"verify_signature": False})["jti"] != claims["jti"]
    assert "client-1" in repr(auth) and "BEGIN" not in repr(auth)


def load_signing_key_from(key, kid: str, alg: str):
    from pipelines.export.auth import SigningKey

    return SigningKey(key, kid, alg)


def test_auth_failure_message_shows_no_secret(tmp_path, data, keys):
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["other"], "k-rsa", "RS384", True)))
    with _auth_server(data, keys) as server, pytest.raises(RemoteError) as caught:
        run_export(options(server, tmp_path, client_id="client-1", key_file=key_file), sleep=Sleeps())
    text = str(caught.value)
    assert text.startswith("the token endpoint refused the client: HTTP 4") and "(invalid_client)" in text
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}", text)  # no JWT in the message


def test_key_file_rules(tmp_path, keys):
    jwks = tmp_path / "two.json"
    jwks.write_bytes(
        orjson.dumps(
            {
                "keys": _jwks(keys["RS384"], "a", "RS384", True)["keys"]
                + _jwks(keys["ES384"], "b", "ES384", True)["keys"]
            }
        )
    )
    from pipelines.common.errors import ConfigError

    with pytest.raises(ConfigError, match="exactly one private"):
        load_signing_key(jwks)
    assert load_signing_key(jwks, kid="b").alg == "ES384"
    public = tmp_path / "public.json"
    public.write_bytes(orjson.dumps(_jwks(keys["RS384"], "a", "RS384", False)))
    with pytest.raises(ConfigError, match="found 0"):
        load_signing_key(public)
    pem = tmp_path / "k.pem"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="P-384"):
        load_signing_key(pem, kid="x")


def test_error_files_are_detected_as_such(tmp_path):
    from pipelines import formats

    path = tmp_path / "errors.ndjson"
    path.write_bytes(b'{"resourceType":"OperationOutcome","issue":[]}\n{"resourceType":"OperationOutcome"}\n')
    assert formats.detect(path) == (formats.FHIR_EXPORT_ERRORS, None)
    path.write_bytes(b'{"resourceType":"OperationOutcome","issue":[]}\n')
    assert formats.detect(path) == (formats.FHIR_EXPORT_ERRORS, None)


def test_tokens_go_only_where_the_rules_allow(keys):
    from pipelines.export.auth import SigningKey

    class Issued(BackendAuth):
        def token(self, client, fhir_base):
            return "t", 1

    auth = Issued("c", SigningKey(keys["RS384"], "k", "RS384"), "https://auth.example.org/token")
    client = BulkClient("https://fhir.example.org/r4", auth, FAST, Sleeps())
    try:
        assert client._token_for("https://fhir.example.org/jobs/1", None) == ("t", 1)
        assert client._token_for("https://status.example.org/jobs/1", None) is None
        assert client._token_for("https://fhir.example.org:8443/jobs/1", None) is None
        assert client._token_for("https://files.example.org/f.ndjson", True) == ("t", 1)
        assert client._token_for("https://fhir.example.org/files/f.ndjson", False) is None
    finally:
        client.close()


def test_logs_carry_no_tokens_assertions_or_urls(tmp_path, data, keys, caplog):
    import logging

    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["RS384"], "k-rsa", "RS384", True)))
    caplog.set_level(logging.DEBUG)
    with _auth_server(data, keys, faults=Faults(expire_token=1)) as server:
        opts = options(
            server, tmp_path, client_id="client-1", key_file=key_file, type_filters=("Patient?gender=female",)
        )
        run_export(opts, sleep=Sleeps())
        tokens = list(server.tokens)
    # Only ehrlift's own records and its HTTP library's (the test token endpoint logs what it issues).
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("authlib"))
    assert "access token obtained" in text
    assert tokens and not any(t in text for t in tokens)
    assert "eyJ" not in text and "gender" not in text and "/files/" not in text


def test_state_rules_on_resume(tmp_path, data):
    from pipelines.common.errors import ConfigError

    with BulkServer(data, faults=Faults(polls_before_ready=1000)) as server:
        brief = Timing(poll_min=1.0, poll_max=1.0, max_wait=1.5, retry_base=0.0, attempts=2)
        with pytest.raises(RemoteError, match="not done"):
            run_export(options(server, tmp_path, timing=brief), sleep=Sleeps())
        with pytest.raises(ConfigError, match="uses another --since"):
            run_export(options(server, tmp_path, since="2024-01-01T00:00:00Z"), sleep=Sleeps())
        with pytest.raises(ConfigError, match="writes to another folder"):
            run_export(options(server, tmp_path, out=tmp_path / "elsewhere"), sleep=Sleeps())
        with pytest.raises(ConfigError, match="source system"):
            run_export(options(server, tmp_path, source_system="other"), sleep=Sleeps())
        with (
            ExportState(tmp_path / "data" / "exports", options(server, tmp_path).key()),
            pytest.raises(ConfigError, match="another `ehrlift export`"),
        ):
            run_export(options(server, tmp_path), sleep=Sleeps())
        server.faults.polls_before_ready = 0
        result = run_export(options(server, tmp_path, restart=True), sleep=Sleeps())
        assert len(server.requests("GET", "/fhir/")) == 2  # --restart: the old job dropped, a new kick-off
        assert len(server.requests("DELETE")) == 2  # the dropped job and the finished one
    assert not result.resumed and sum(result.resources.values()) == 25


def test_a_refused_status_request_keeps_the_job(tmp_path, data, keys):
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["RS384"], "k-rsa", "RS384", True)))
    with _auth_server(data, keys, faults=Faults(polls_before_ready=5)) as server:
        opts = options(server, tmp_path, client_id="client-1", key_file=key_file)

        def revoke_all(_seconds: float) -> None:
            server.clients.clear()  # the client is unregistered while the job runs
            server.tokens.clear()

        with pytest.raises(RemoteError, match="refused the client"):
            run_export(opts, sleep=revoke_all)
        with ExportState(tmp_path / "data" / "exports", opts.key()) as state:
            assert state.job is not None and state.job["status_url"]
        assert server.requests("DELETE") == []


def test_poll_reports_x_progress(data):
    with BulkServer(data, faults=Faults(polls_before_ready=2)) as server:
        client = BulkClient(server.base, timing=FAST, sleep=Sleeps())
        try:
            status_url = client.kickoff(client.kickoff_url("system", None, None, (), ()))
            seen: list[str | None] = []
            manifest = client.poll(status_url, seen.append)
        finally:
            client.close()
    assert seen == ["33% done", "66% done"]
    assert manifest.requires_access_token is False and len(manifest.output) == 4
