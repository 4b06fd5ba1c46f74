"""`ehrlift export` against a Bulk Data server on loopback: protocol, failures, resume, _since, auth."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from pipelines.cli import main
from pipelines.common.errors import ExitCode
from pipelines.export.client import BulkClient, Timing
from pipelines.export.options import ExportOptions
from pipelines.export.runner import run_export
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
        assert server.requests("GET", "/fhir/") == ["/fhir/metadata", "/fhir/$export"]
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
        kickoff = server.kickoffs("GET")
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
        sleeps = Sleeps()
        with pytest.raises(RemoteError, match="not done after 25 s"):
            # The clock is the waits asked for: a slow machine cannot change the count of polls.
            run_export(options(server, tmp_path, timing=brief), sleep=sleeps, clock=lambda: sum(sleeps))
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
        assert len(server.kickoffs("GET")) == kickoffs
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
    links = [{"relation": "self", "url": "s"}, {"relation": "next", "url": "p/2"}]
    paged = parse_manifest(orjson.dumps({**base, "link": links}), "https://a.example/s")
    assert paged.next_url == "https://a.example/p/2"
    with pytest.raises(RemoteError, match="next link points to another server"):
        parse_manifest(
            orjson.dumps({**base, "link": [{"relation": "next", "url": "https://b.example/p/2"}]}),
            "https://a.example/s",
        )
    with pytest.raises(RemoteError, match="more than one next link"):
        parse_manifest(
            orjson.dumps({**base, "link": [{"relation": "next", "url": u} for u in ("x", "y")]}),
            "https://a.example/s",
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
        ) as caught:
            run_export(options(server, tmp_path), sleep=Sleeps())
        assert "--restart" in str(caught.value)
        assert server.requests("DELETE") == []  # the job stays on the server for the retry
        faults.file_gone.clear()
        result = run_export(options(server, tmp_path), sleep=Sleeps())
        assert result.resumed and result.fetched_now == 1
        assert file_gets(server) == Counter(
            {"Condition.ndjson": 1, "Encounter.ndjson": 2, "Observation.ndjson": 1, "Patient.ndjson": 1}
            | {"errors.ndjson": 1}
        )
        assert len(server.kickoffs("GET")) == 1  # the same job, not a new kick-off


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
        assert len(server.kickoffs("GET")) == 1
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
        assert len(server.kickoffs("GET")) == 1
    assert result.resumed and sum(result.resources.values()) == 25


def test_incremental_export_uses_the_last_transaction_time(tmp_path, data):
    with BulkServer(data) as server:
        first = run_export(options(server, tmp_path), sleep=Sleeps())
        later = datetime.now(UTC) + timedelta(seconds=5)
        server.touch("Patient", "p1", later, gender="male")
        server.touch("Observation", "o9-1", later, status="final", subject={"reference": "Patient/p1"})
        server.delete_resource("Condition", "c2", later)
        second = run_export(options(server, tmp_path), sleep=Sleeps())
        kickoffs = [p for m, p, _s, _a in server.log if m == "GET" and p.endswith("/$export")]
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
    # The manifest accounts for its Patient output, its error file and its deleted file; the error file
    # has the same bytes as the first run's: landed once, so it has no rows of its own.
    assert rows == [
        ("converted", "newer_version", 1),
        ("skipped", "bundle_delete_request", 1),
        ("skipped", "manifest_output_landed", 3),
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


def test_error_files_are_detected_as_such(tmp_path):
    from pipelines import formats

    path = tmp_path / "errors.ndjson"
    path.write_bytes(b'{"resourceType":"OperationOutcome","issue":[]}\n{"resourceType":"OperationOutcome"}\n')
    assert formats.detect(path) == (formats.FHIR_EXPORT_ERRORS, None)
    path.write_bytes(b'{"resourceType":"OperationOutcome","issue":[]}\n')
    assert formats.detect(path) == (formats.FHIR_EXPORT_ERRORS, None)


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
        assert len(server.kickoffs("GET")) == 2  # --restart: the old job dropped, a new kick-off
        assert len(server.requests("DELETE")) == 2  # the dropped job and the finished one
    assert not result.resumed and sum(result.resources.values()) == 25


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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source_system": "bad name!"}, "source system name"),
        ({"types": ("patient",)}, "not a FHIR resource type"),
        ({"since": "yesterday"}, "FHIR instant"),
        ({"since": "2024-01-01T00:00:00Z", "full": True}, "contradict"),
        ({"workers": 0}, "--workers"),
        ({"client_id": "c"}, "needs --key"),
    ],
)
def test_bad_options_fail_before_any_request(tmp_path, data, kwargs, message):
    from pipelines.common.errors import ConfigError

    with BulkServer(data) as server:
        with pytest.raises(ConfigError, match=message):
            run_export(options(server, tmp_path, **kwargs), sleep=Sleeps())
        assert server.log == []
