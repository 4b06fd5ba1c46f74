"""allowPartialManifests: files listed by a running job are fetched while polling goes on, once each."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from pipelines.export.client import BulkClient
from pipelines.export.runner import run_export
from pipelines.export.state import ExportState
from pipelines.export.web import RemoteError
from tests.bulk_server import BulkServer, Faults, generated_resources
from tests.test_export import T0, file_gets, options

ALL_FILES = Counter(
    {"Condition.ndjson": 1, "Encounter.ndjson": 1, "Observation.ndjson": 1, "Patient.ndjson": 1}
    | {"errors.ndjson": 1}
)


@pytest.fixture
def data() -> dict[str, list[dict]]:
    return generated_resources(5, T0)


class Crash(BaseException):
    """Stands in for the process dying."""


class WaitForDownloads(list):
    """The client's wait between polls: records what it asked for, and lets the download threads finish
    the files the server has listed so far, as a real Retry-After wait would (no wall-clock asserts)."""

    def __init__(self, server: BulkServer, crash_at: int | None = None, never: int = 0) -> None:
        super().__init__()
        self.server = server
        self.crash_at = crash_at
        self.never = never  # files whose download thread dies: they never arrive

    def listed(self) -> int:
        """Files the server's answers so far have listed (the error file is on every page)."""
        count = 0
        for job in self.server.jobs.values():
            whole = self.server.manifest(job)
            files = len(whole["output"]) + len(whole.get("deleted", [])) + len(whole["error"])
            if not job.partial:
                count += files if job.polls > self.server.faults.polls_before_ready else 0
            elif released := self.server.released(job):
                count += released + len(whole["error"])
        return count

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        deadline = time.monotonic() + 20
        while sum(file_gets(self.server).values()) < self.listed() - self.never:
            assert time.monotonic() < deadline, "the listed files were not downloaded during the wait"
            time.sleep(0.01)
        if self.crash_at is not None and len(self) >= self.crash_at:
            raise Crash


def answers(server: BulkServer) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request, in the order the server finished them."""
    with server.lock:
        return [(m, p, s) for m, p, s, _a in server.log]


def test_files_are_fetched_while_the_job_still_runs(tmp_path, data):
    faults = Faults(polls_before_ready=6)
    with BulkServer(data, partial_release=1, faults=faults) as server:
        sleeps = WaitForDownloads(server)
        result = run_export(options(server, tmp_path, partial_manifests=True, workers=2), sleep=sleeps)
        (job,) = server.jobs.values()
        assert job.partial and "allowPartialManifests=true" in job.request
        log = answers(server)
        status = next(path for _m, path, _s in log if path.startswith("/jobs/"))
        assert [(p.removeprefix(status), s) for m, p, s in log if p.startswith(status)] == [
            ("", 202),  # page 1: Condition (and the error file)
            ("", 202),  # page 1 again, now with a next link
            ("/page/2", 202),  # Encounter, with a link to page 3
            ("/page/3", 202),  # Observation, with a link to page 4
            ("/page/4", 202),  # Patient: every file is out, but the job still runs
            ("/page/4", 202),
            ("/page/4", 200),  # done: the last page has no next link
            ("", 202),  # DELETE of the finished job
        ]
        done_at = next(i for i, (m, p, s) in enumerate(log) if p.startswith(status) and s == 200)
        fetched = [i for i, (m, p, s) in enumerate(log) if p.startswith("/files/")]
        assert len(fetched) == 5 and max(fetched) < done_at  # every file while the job was running
        assert file_gets(server) == ALL_FILES  # the error file, on every page, fetched once
    assert sleeps == [1.0, 1.0, 1.0]
    assert result.files == Counter({"output": 4, "error": 1})
    assert result.resources == Counter({"Condition": 5, "Encounter": 5, "Observation": 10, "Patient": 5})
    assert result.fetched_now == 5 and result.deleted_on_server


def test_several_files_per_page_and_a_slow_start(tmp_path, data):
    with BulkServer(data, partial_release=3, partial_delay=2) as server:
        sleeps = WaitForDownloads(server)
        result = run_export(options(server, tmp_path, partial_manifests=True, workers=4), sleep=sleeps)
        status = next(path for _m, path, _s in answers(server) if path.startswith("/jobs/"))
        assert [(p.removeprefix(status), s) for m, p, s in answers(server) if p.startswith(status)][:5] == [
            ("", 202),  # nothing ready: no manifest yet
            ("", 202),
            ("", 202),  # Condition, Encounter, Observation and the error file
            ("", 200),  # the rest is out: page 1 gains its link
            ("/page/2", 200),
        ]
        assert file_gets(server) == ALL_FILES
    assert sum(result.resources.values()) == 25


def test_a_crash_while_polling_resumes_without_fetching_anything_twice(tmp_path, data):
    faults = Faults(polls_before_ready=6)
    with BulkServer(data, partial_release=1, faults=faults) as server:
        with pytest.raises(Crash):
            run_export(
                options(server, tmp_path, partial_manifests=True), sleep=WaitForDownloads(server, crash_at=1)
            )
        with ExportState(tmp_path / "data" / "exports", options(server, tmp_path).key()) as state:
            job = state.job
            assert job is not None and job["partial_manifests"] and not job["listed"]
            assert [(f["type"], f["status"]) for f in job["files"]] == [
                ("Condition", "done"),
                ("OperationOutcome", "done"),
            ]
        before = file_gets(server)
        result = run_export(options(server, tmp_path, partial_manifests=True), sleep=WaitForDownloads(server))
        assert len(server.kickoffs("GET")) == 1  # the same job
        assert file_gets(server) == ALL_FILES
    assert sum(before.values()) == 2 and result.resumed and result.fetched_now == 3
    assert result.files == Counter({"output": 4, "error": 1})


def test_a_crash_in_a_download_thread_stops_the_export_and_resumes(tmp_path, data, monkeypatch):
    original = BulkClient.download

    def dying(self, url, target, *args, **kwargs):
        if url.endswith("/Encounter.ndjson"):
            raise Crash
        return original(self, url, target, *args, **kwargs)

    with BulkServer(data, partial_release=1, faults=Faults(polls_before_ready=6)) as server:
        monkeypatch.setattr(BulkClient, "download", dying)
        with pytest.raises(Crash):
            run_export(
                options(server, tmp_path, partial_manifests=True), sleep=WaitForDownloads(server, never=1)
            )
        monkeypatch.setattr(BulkClient, "download", original)
        result = run_export(options(server, tmp_path, partial_manifests=True), sleep=WaitForDownloads(server))
        assert file_gets(server) == ALL_FILES
    assert result.resumed and sum(result.resources.values()) == 25


def test_a_server_that_ignores_the_parameter_still_works(tmp_path, data):
    with BulkServer(data, faults=Faults(polls_before_ready=2)) as server:
        sleeps = WaitForDownloads(server)
        result = run_export(options(server, tmp_path, partial_manifests=True), sleep=sleeps)
        (job,) = server.jobs.values()
        assert not job.partial and "allowPartialManifests=true" in job.request
        assert [s for m, p, s in answers(server) if p.startswith("/jobs/") and m == "GET"] == [202, 202, 200]
        assert file_gets(server) == ALL_FILES
    assert sleeps == [1.0, 1.0] and sum(result.resources.values()) == 25


def test_partial_manifests_with_a_post_kickoff_and_completion_pages(tmp_path, data):
    # The server pages its completion manifest too: the pages after the status URL's are followed.
    with BulkServer(data, partial_release=2) as server:
        result = run_export(
            options(server, tmp_path, scope="patient", method="post", partial_manifests=True),
            sleep=WaitForDownloads(server),
        )
        assert {"name": "allowPartialManifests", "valueBoolean": True} in server.kickoff_bodies[0][
            "parameter"
        ]
        assert file_gets(server) == ALL_FILES
    assert sum(result.resources.values()) == 25


def test_the_pages_of_a_partial_manifest_are_bounded(tmp_path, data):
    with (
        BulkServer(data, partial_release=1, faults=Faults(polls_before_ready=6)) as server,
        pytest.raises(RemoteError, match="goes on past 2 pages"),
    ):
        run_export(
            options(server, tmp_path, partial_manifests=True, max_pages=2), sleep=WaitForDownloads(server)
        )


def test_a_failed_partial_job_is_reported_and_forgotten(tmp_path, data):
    with BulkServer(data, partial_release=1, faults=Faults(status_fatal=True)) as server:
        with pytest.raises(RemoteError, match=r"job failed: HTTP 500, OperationOutcome error/exception"):
            run_export(options(server, tmp_path, partial_manifests=True), sleep=WaitForDownloads(server))
        assert len(server.requests("DELETE")) == 1
        with ExportState(tmp_path / "data" / "exports", options(server, tmp_path).key()) as state:
            assert state.job is None
