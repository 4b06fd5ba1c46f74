"""Range resumes of broken downloads, partial manifests with `next` links, 3.0 manifests given to `run`."""

from __future__ import annotations

import hashlib
from collections import Counter

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pipelines.common.config import RunConfig
from pipelines.export.client import BulkClient
from pipelines.export.runner import run_export
from pipelines.export.state import ExportState
from pipelines.export.web import RemoteError
from pipelines.run import run_pipeline
from tests.bulk_server import BulkServer, Faults, generated_resources
from tests.test_export import FAST, T0, Sleeps, file_gets, options
from tests.test_export_auth import _auth_server, _jwks

OBS = "Observation.ndjson"


@pytest.fixture
def data() -> dict[str, list[dict]]:
    return generated_resources(5, T0)


def body_of(data: dict[str, list[dict]], rtype: str) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in data[rtype])


def served(server: BulkServer, name: str) -> list[tuple[int, int, int]]:
    """(status, first byte, bytes sent) of each answer the server gave for one file."""
    return [(status, start, count) for n, status, start, count in server.served if n == name]


def export(server: BulkServer, tmp_path, sleep=None, **kwargs):
    return run_export(options(server, tmp_path, workers=1, **kwargs), sleep=sleep or Sleeps())


def state_job(server: BulkServer, tmp_path) -> dict | None:
    with ExportState(tmp_path / "data" / "exports", options(server, tmp_path).key()) as state:
        return state.job


# -- Range resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["file_drop", "file_truncate"])
def test_a_broken_download_resumes_with_a_range_request_for_the_rest(tmp_path, data, fault):
    whole = body_of(data, "Observation")
    half = len(whole) // 2
    faults = Faults()
    getattr(faults, fault)[OBS] = 1
    with BulkServer(data, faults=faults) as server:
        result = export(server, tmp_path)
        log = served(server, OBS)
    # The first answer broke off after half the file; the second sent only the rest, as a 206.
    assert log == [(200, 0, half), (206, half, len(whole) - half)]
    assert (result.out_dir / "Observation.001.ndjson").read_bytes() == whole
    assert result.resources["Observation"] == 10  # the manifest's count is checked on the whole file
    assert not list(result.out_dir.rglob("*.part*"))


def test_a_resumed_file_has_the_whole_files_sha256_and_line_count(tmp_path, data):
    whole = body_of(data, "Observation")
    faults = Faults(polls_before_ready=0)
    faults.file_drop[OBS] = 1
    with BulkServer(data, faults=faults) as server:
        client = BulkClient(server.base, timing=FAST, sleep=Sleeps())
        manifest = client.poll(client.kickoff(client.kickoff_url("system", None, None, (), ())))
        url = next(e["url"] for e in manifest.output if e["type"] == "Observation")
        target = tmp_path / "Observation.ndjson"
        outcome = client.download(url, target, False, 10)
        client.close()
        assert [status for status, _s, _n in served(server, OBS)] == [200, 206]
    assert (outcome.status, outcome.attempts, outcome.bytes, outcome.lines) == ("done", 2, len(whole), 10)
    assert outcome.sha256 == hashlib.sha256(whole).hexdigest()


def test_a_server_that_ignores_range_sends_the_file_again_from_the_start(tmp_path, data):
    whole = body_of(data, "Observation")
    faults = Faults(ignore_range=True)
    faults.file_drop[OBS] = 1
    with BulkServer(data, faults=faults) as server:
        result = export(server, tmp_path)
        log = served(server, OBS)
    assert log == [(200, 0, len(whole) // 2), (200, 0, len(whole))]
    assert (result.out_dir / "Observation.001.ndjson").read_bytes() == whole  # not half + whole


def test_a_changed_file_is_fetched_whole_when_if_range_no_longer_matches(tmp_path, data):
    whole = body_of(data, "Observation")
    faults = Faults()
    faults.file_drop[OBS] = 1

    def sleep_while_the_file_changes(_seconds: float) -> None:
        faults.file_version[OBS] += 1  # a new ETag between the broken transfer and the retry

    with BulkServer(data, faults=faults) as server:
        result = export(server, tmp_path, sleep=sleep_while_the_file_changes)
        log = served(server, OBS)
    assert log == [(200, 0, len(whole) // 2), (200, 0, len(whole))]
    assert (result.out_dir / "Observation.001.ndjson").read_bytes() == whole


def test_a_rerun_after_failed_attempts_resumes_the_kept_part(tmp_path, data):
    whole = body_of(data, "Observation")
    faults = Faults()
    faults.file_drop[OBS] = FAST.attempts  # every attempt of the first run breaks off half-way
    with BulkServer(data, faults=faults) as server:
        with pytest.raises(RemoteError, match="export_download_failed 1"):
            export(server, tmp_path)
        first = served(server, OBS)
        result = export(server, tmp_path)
        log = served(server, OBS)
    assert len(first) == FAST.attempts and [s for s, _a, _n in first] == [200] + [206] * (FAST.attempts - 1)
    # Every byte of the file was sent exactly once over both runs, in order.
    offsets = [(start, count) for _s, start, count in log]
    assert [start for start, _n in offsets] == [sum(n for _s, n in offsets[:i]) for i in range(len(offsets))]
    assert sum(count for _s, count in offsets) == len(whole)
    assert log[-1][0] == 206 and result.fetched_now == 1
    assert (result.out_dir / "Observation.001.ndjson").read_bytes() == whole


def test_a_part_file_without_a_recorded_validator_is_not_resumed(tmp_path, data):
    with BulkServer(data, faults=Faults(polls_before_ready=0)) as server:
        client = BulkClient(server.base, timing=FAST, sleep=Sleeps())
        manifest = client.poll(client.kickoff(client.kickoff_url("system", None, None, (), ())))
        url = next(e["url"] for e in manifest.output if e["type"] == "Patient")
        target = tmp_path / "Patient.ndjson"
        target.with_name(target.name + ".part").write_bytes(b'{"resourceType":"Pat')  # whose version?
        outcome = client.download(url, target, False, 5)
        client.close()
        assert served(server, "Patient.ndjson") == [(200, 0, len(body_of(data, "Patient")))]
    assert outcome.status == "done" and target.read_bytes() == body_of(data, "Patient")


# -- partial manifests ---------------------------------------------------------------------------------


def test_partial_manifest_pages_are_followed_and_merged(tmp_path, data):
    with BulkServer(data, faults=Faults(page_size=2)) as server:
        result = export(server, tmp_path)
        job = server.requests("GET", "/jobs/")[0]
        assert server.requests("GET", "/jobs/") == [job, job, f"{job}/page/2", f"{job}/page/3"]
        assert file_gets(server) == Counter(
            {"Condition.ndjson": 1, "Encounter.ndjson": 1, "Observation.ndjson": 1, "Patient.ndjson": 1}
            | {"errors.ndjson": 1}
        )
    assert result.files == Counter({"output": 4, "error": 1})
    assert result.resources == Counter({"Condition": 5, "Encounter": 5, "Observation": 10, "Patient": 5})
    local = orjson.loads((result.out_dir / "manifest.json").read_bytes())
    assert len(local["output"]) == 4 and len(local["error"]) == 1 and "link" not in local


def test_a_crash_while_paging_resumes_at_the_page_that_failed(tmp_path, data):
    faults = Faults(page_size=2)
    faults.page_fatal[3] = FAST.attempts  # page 3 keeps failing through every retry of the first run
    with BulkServer(data, faults=faults) as server:
        with pytest.raises(RemoteError, match="a page of the export's manifest could not be fetched"):
            export(server, tmp_path)
        job = state_job(server, tmp_path)
        assert job is not None and job["pages"] == 2 and job["next_page"].endswith("/page/3")
        assert len(job["files"]) == 4 and file_gets(server) == Counter()
        result = export(server, tmp_path)
        pages = Counter(p.rsplit("/", 1)[1] for p in server.requests("GET", "/jobs/") if "/page/" in p)
        assert pages == Counter({"2": 1, "3": FAST.attempts + 1})  # page 2 was not asked for again
        assert len(server.kickoffs("GET")) == 1  # the same job
    assert result.resumed and result.files == Counter({"output": 4, "error": 1})


def test_the_number_of_manifest_pages_is_bounded(tmp_path, data):
    with BulkServer(data, faults=Faults(page_size=1)) as server:
        with pytest.raises(RemoteError, match="goes on past 3 pages"):
            export(server, tmp_path, max_pages=3)
        assert sum("/page/" in p for p in server.requests("GET", "/jobs/")) == 2
        assert file_gets(server) == Counter()  # no file is fetched from an incomplete list


def test_manifest_pages_get_a_token_only_when_files_do(tmp_path, data):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(key, "k-rsa", "RS384", True)))
    seen = {}
    for needed in (True, False):
        with _auth_server(
            data,
            {"RS384": key, "ES384": ec.generate_private_key(ec.SECP384R1())},
            requires_access_token=needed,
            faults=Faults(page_size=2),
        ) as server:
            run_export(
                options(server, tmp_path / str(needed), client_id="client-1", key_file=key_file),
                sleep=Sleeps(),
            )
            seen[needed] = [a for m, p, _s, a in server.log if m == "GET" and p.startswith("/jobs/")]
    # The status URL is the server's API (token always); its pages follow requiresAccessToken.
    assert seen[True] == [True] * 4
    assert seen[False] == [True, True, False, False]


# -- a Bulk Data 3.0 manifest given straight to `ehrlift run` -------------------------------------------


def test_run_lands_outcome_and_deleted_files_of_a_3_0_manifest(tmp_path, warehouse):
    export_dir = tmp_path / "export"
    (export_dir / "outcome").mkdir(parents=True)
    patients = [{"resourceType": "Patient", "id": f"p{i}", "gender": "female"} for i in (1, 2)]
    (export_dir / "Patient.ndjson").write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in patients))
    issue = {"severity": "warning", "code": "processing", "diagnostics": "a note was unreadable"}
    (export_dir / "outcome" / "oo.ndjson").write_bytes(
        orjson.dumps({"resourceType": "OperationOutcome", "issue": [issue]}) + b"\n"
    )
    deletes = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": "Condition/c9"}}],
    }
    (export_dir / "deleted.ndjson").write_bytes(orjson.dumps(deletes) + b"\n")
    manifest = {
        "transactionTime": "2024-03-01T12:00:00Z",
        "request": "https://ehr.example/fhir/$export?_since=2024-01-01T00:00:00Z",
        "requiresAccessToken": False,
        "output": [{"type": "Patient", "url": "Patient.ndjson"}],
        "outcome": [{"type": "OperationOutcome", "url": "outcome/oo.ndjson"}],
        "deleted": [{"type": "Bundle", "url": "deleted.ndjson"}],
    }
    (export_dir / "manifest.json").write_bytes(orjson.dumps(manifest))
    summary = run_pipeline(
        RunConfig(
            sources=(str(export_dir / "manifest.json"),),
            warehouse=tmp_path / "data" / "warehouse.duckdb",
            progress=False,
        )
    )
    assert summary.reconciles
    con = warehouse()
    rows = con.execute(
        "SELECT f.format, l.outcome, l.reason, count(*) FROM ops.ledger l "
        "JOIN ops.files f USING (file_sha256) GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert rows == [
        ("fhir-bulk-manifest", "skipped", "manifest_output_landed", 3),
        ("fhir-bundle", "skipped", "bundle_delete_request", 1),
        ("fhir-export-errors", "skipped", "export_error_file", 1),
        ("fhir-ndjson", "converted", None, 2),
    ]
    assert con.execute('SELECT count(*) FROM fhir."Patient"').fetchone()[0] == 2


def test_a_kept_part_longer_than_the_file_is_dropped_on_416(tmp_path, data):
    whole = body_of(data, "Patient")
    with BulkServer(data, faults=Faults(polls_before_ready=0)) as server:
        client = BulkClient(server.base, timing=FAST, sleep=Sleeps())
        manifest = client.poll(client.kickoff(client.kickoff_url("system", None, None, (), ())))
        url = next(e["url"] for e in manifest.output if e["type"] == "Patient")
        target = tmp_path / "Patient.ndjson"
        target.with_name(target.name + ".part").write_bytes(whole + b"more than the file\n")
        etag = f'"Patient.ndjson-0-{len(whole)}"'  # the fixture's ETag: the validator still matches
        meta = {"url": hashlib.sha256(url.encode()).hexdigest(), "validator": etag}
        target.with_name(target.name + ".part.json").write_bytes(orjson.dumps(meta))
        outcome = client.download(url, target, False, 5)
        client.close()
        # 416 for the range past the end: the kept bytes are dropped and the file fetched whole.
        assert [m for m, p, s, _a in server.log if p.endswith("/Patient.ndjson")] == ["GET", "GET"]
        assert [s for m, p, s, _a in server.log if p.endswith("/Patient.ndjson")] == [416, 200]
    assert (outcome.status, outcome.attempts) == ("done", 2) and target.read_bytes() == whole
    assert not list(tmp_path.glob("*.part*"))
