"""POST kick-off with a FHIR Parameters body: patient lists, includeAssociatedData, refusals shown safely."""

from __future__ import annotations

from collections import Counter

import httpx
import orjson
import pytest

from pipelines.cli import main
from pipelines.common.errors import ConfigError, ExitCode
from pipelines.export.client import BulkClient
from pipelines.export.runner import run_export
from pipelines.export.state import ExportState
from pipelines.export.web import RemoteError, outcome_diagnostics
from tests.bulk_server import BulkServer, generated_resources
from tests.conftest import read_ndjson
from tests.test_export import T0, Sleeps, options


@pytest.fixture
def data() -> dict[str, list[dict]]:
    return generated_resources(5, T0)


def test_post_kickoff_of_a_group_export_end_to_end(tmp_path, data):
    with BulkServer(data, groups={"g1": {"p1", "p2"}}) as server:
        opts = options(
            server,
            tmp_path,
            scope="group",
            group="g1",
            method="post",
            since="2024-01-01T00:00:00Z",
            types=("Observation", "Patient"),
            type_filters=("Observation?status=final",),
        )
        result = run_export(opts, sleep=Sleeps())
        assert server.requests("POST", "/fhir/") == ["/fhir/Group/g1/$export"]
        assert server.kickoffs("GET") == []
        assert server.kickoff_bodies == [
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
                    {"name": "_since", "valueInstant": "2024-01-01T00:00:00Z"},
                    {"name": "_type", "valueString": "Observation"},
                    {"name": "_type", "valueString": "Patient"},
                    {"name": "_typeFilter", "valueString": "Observation?status=final"},
                ],
            }
        ]
        (job,) = server.jobs.values()
        assert job.method == "POST" and job.request == server.base + "/Group/g1/$export"
    assert result.resources == Counter({"Observation": 2, "Patient": 2})
    assert {r["status"] for r in read_ndjson(result.out_dir / "Observation.001.ndjson")} == {"final"}
    local = orjson.loads((result.out_dir / "manifest.json").read_bytes())
    assert local["request"] == server.base + "/Group/g1/$export"  # a POST's request URL has no parameters


def test_patient_ids_choose_post_and_limit_the_output(tmp_path, data):
    with BulkServer(data) as server:
        opts = options(server, tmp_path, scope="patient", patients=("p2", "Patient/p4"))
        result = run_export(opts, sleep=Sleeps())
        assert server.requests("POST", "/fhir/") == ["/fhir/Patient/$export"]
        refs = [p["valueReference"] for p in server.kickoff_bodies[0]["parameter"] if p["name"] == "patient"]
        assert refs == [{"reference": "Patient/p2"}, {"reference": "Patient/p4"}]
        # The patient list is its own selection: an export of all patients has no `_since` yet.
        everyone = run_export(options(server, tmp_path, scope="patient"), sleep=Sleeps())
        assert server.kickoffs("GET") == ["/fhir/Patient/$export"]
    assert result.resources == Counter({"Condition": 2, "Encounter": 2, "Observation": 4, "Patient": 2})
    subjects = {
        r.get("id") if r["resourceType"] == "Patient" else r["subject"]["reference"]
        for name in ("Patient", "Observation", "Encounter", "Condition")
        for r in read_ndjson(result.out_dir / f"{name}.001.ndjson")
    }
    assert subjects == {"p2", "p4", "Patient/p2", "Patient/p4"}
    assert everyone.since_used is None and sum(everyone.resources.values()) == 25
    with ExportState(tmp_path / "data" / "exports", opts.key()) as state:
        assert state.since == result.transaction_time
        assert state.key.patients == ("Patient/p2", "Patient/p4")


def test_group_export_limited_to_some_members(tmp_path, data):
    with BulkServer(data, groups={"g1": {"p1", "p2", "p3"}}) as server:
        result = run_export(
            options(server, tmp_path, scope="group", group="g1", patients=("p3",)), sleep=Sleeps()
        )
    assert result.resources == Counter({"Condition": 1, "Encounter": 1, "Observation": 2, "Patient": 1})


def test_a_patient_outside_the_group_is_refused_and_not_shown(tmp_path, data):
    with BulkServer(data, groups={"g1": {"p1"}}) as server:
        opts = options(server, tmp_path, scope="group", group="g1", patients=("p1", "p9"))
        with pytest.raises(RemoteError) as caught:
            run_export(opts, sleep=Sleeps())
        assert server.jobs == {}
    message = str(caught.value)
    assert message.startswith(
        "the server refused the export request: HTTP 400, OperationOutcome error/invalid: "
        "Patient/… is not a member of the group"
    )
    assert "p9" not in message and "g1" not in message


def test_a_malformed_body_exits_9_with_the_servers_diagnostics(tmp_path, data, capsys, monkeypatch):
    original = BulkClient.kickoff_parameters

    def malformed(*args, **kwargs):
        # A body a careless client could send: _since as a string where the IG types it as an instant.
        body = original(*args, **kwargs)
        body["parameter"][1] = {"name": "_since", "valueString": "2024-01-01T00:00:00Z"}
        return body

    monkeypatch.setattr(BulkClient, "kickoff_parameters", staticmethod(malformed))
    with BulkServer(data) as server:
        code = main(
            [
                "export",
                "--server",
                server.base,
                "--patient",
                "--patient-id",
                "p1,p2",
                "--since",
                "2024-01-01T00:00:00Z",
                "--warehouse",
                str(tmp_path / "w.duckdb"),
                "--no-progress",
                "--no-run",
            ]
        )
        assert server.jobs == {}
    assert code == ExitCode.REMOTE
    printed = capsys.readouterr().err
    assert "HTTP 400, OperationOutcome error/invalid: Parameters.parameter(1) (_since) needs exactly one" in (
        " ".join(printed.split())
    )
    assert "p1" not in printed and "p2" not in printed


@pytest.mark.parametrize(
    ("content_type", "body", "diagnostics"),
    [
        ("text/plain", b"{}", "Content-Type must be application/fhir+json"),
        ("application/fhir+json", b"{not json", "the request body is not JSON"),
        ("application/fhir+json", b'{"resourceType":"Patient"}', "the request body must be a Parameters"),
        ("application/fhir+json", b'{"resourceType":"Parameters","parameter":{}}', "must be an array"),
        (
            "application/fhir+json",
            b'{"resourceType":"Parameters","parameter":[{"valueString":"x"}]}',
            "Parameters.parameter[0] has no name",
        ),
        (
            "application/fhir+json",
            b'{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"A","valueCode":"B"}]}',
            "needs exactly one valueString",
        ),
        (
            "application/fhir+json",
            b'{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Group/1"}}]}',
            "must reference a Patient",
        ),
        (
            "application/fhir+json",
            b'{"resourceType":"Parameters","parameter":[{"name":"_outputFormat","valueString":"ndjson"},'
            b'{"name":"_outputFormat","valueString":"ndjson"}]}',
            "may appear only once",
        ),
        (
            "application/fhir+json",
            b'{"resourceType":"Parameters","parameter":[{"name":"_elements","valueString":"id"}]}',
            "_elements is not supported",
        ),
        (
            "application/fhir+json",
            b'{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":'
            b'{"reference":"Patient/p1"}}]}',
            "patient does not apply to a system-level export",
        ),
    ],
)
def test_the_server_checks_the_parameters_body(data, content_type, body, diagnostics):
    with BulkServer(data) as server:
        answer = httpx.post(
            server.base + "/$export",
            content=body,
            headers={
                "Accept": "application/fhir+json",
                "Prefer": "respond-async",
                "Content-Type": content_type,
            },
        )
    assert answer.status_code == 400
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert diagnostics in outcome["issue"][0]["diagnostics"]


def test_get_cannot_carry_patient_and_include_associated_data_goes_either_way(tmp_path, data):
    with BulkServer(data) as server:
        answer = httpx.get(
            server.base + "/Patient/$export?patient=Patient/p1",
            headers={"Accept": "application/fhir+json", "Prefer": "respond-async"},
        )
        assert answer.status_code == 400
        for method in ("get", "post"):
            run_export(
                options(
                    server,
                    tmp_path / method,
                    scope="patient",
                    method=method,
                    include_associated=("LatestProvenanceResources",),
                ),
                sleep=Sleeps(),
            )
        assert [job.include_associated for job in server.jobs.values()] == [["LatestProvenanceResources"]] * 2
        assert [job.method for job in server.jobs.values()] == ["GET", "POST"]
        with pytest.raises(RemoteError, match="HTTP 400, OperationOutcome error/not-supported"):
            run_export(
                options(server, tmp_path / "x", scope="patient", include_associated=("_custom",)),
                sleep=Sleeps(),
            )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scope": "system", "patients": ("p1",)}, "Patient- and Group-level exports only"),
        ({"scope": "patient", "patients": ("p1",), "method": "get"}, "GET kick-off cannot carry patient"),
        ({"scope": "patient", "patients": ("John Smith",)}, "is not a FHIR id"),
        ({"scope": "patient", "include_associated": ("not a code",)}, "is not a code"),
    ],
)
def test_bad_post_options_fail_before_any_request(tmp_path, data, kwargs, message):
    with BulkServer(data) as server:
        with pytest.raises(ConfigError, match=message) as caught:
            run_export(options(server, tmp_path, **kwargs), sleep=Sleeps())
        assert server.log == []
    assert "Smith" not in str(caught.value)


def test_diagnostics_are_shown_without_identifying_text():
    def said(text: str, sent: tuple[str, ...] = ()) -> str | None:
        body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "diagnostics": text}]}
        return outcome_diagnostics(httpx.Response(400, content=orjson.dumps(body)), sent)

    assert said("Patient/123 not found; see Observation/o-1") == "Patient/… not found; see Observation/…"
    assert said("MRN 0012345 born 1970-01-02 or 1/2/1970 (x@y.org)") == "MRN … born … or … (…)"
    assert said('the "csv" _outputFormat is not supported') == "the … _outputFormat is not supported"
    assert said("member abc-9 of g7 is unknown", ("abc-9", "g7")) == "member … of … is unknown"
    assert said("parameter[2] [/x]") == "parameter(2) (/x)"
    assert said("x" * 300).endswith("…") and len(said("x" * 300)) == 201
    assert outcome_diagnostics(httpx.Response(400, content=b"<html>")) is None
