"""Site profiles: elements dropped and defaults filled by opt-in and counted; existing records mapped."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipelines.backload.plan import build_plan
from pipelines.backload.profiles import target_profile
from pipelines.backload.runner import backload_status, plan_backload
from pipelines.backload.site import load_site
from pipelines.cli import main
from pipelines.common.errors import ConfigError
from pipelines.common.reasons import reason_codes
from pipelines.common.warehouse import SCHEMA_VERSION, open_warehouse
from pipelines.report.render import write_report
from tests.backload_builders import SNOMED, build_warehouse, cc, patient, vital
from tests.backload_server import FhirServer
from tests.test_backload_send import _send

SITES = Path(__file__).parent.parent / "terminology" / "targets" / "sites"


def _encounter(eid: str, location: str | None) -> dict:
    enc = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "type": [cc(SNOMED, "185349003")],
        "subject": {"reference": "Patient/p1"},
        "participant": [{"individual": {"reference": "Practitioner/dr"}}],
    }
    if location:
        enc["location"] = [{"location": {"reference": f"Location/{location}"}}]
    return enc


def resources() -> list[dict]:
    return [
        patient("p1", "M1", deceasedBoolean=False),
        {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "D"}],
         "identifier": [{"system": "urn:npi", "value": "123"}]},  # a stand-in: matched, never created
        {"resourceType": "Location", "id": "loc1", "identifier": [{"value": "ED"}], "name": "ED"},
        {"resourceType": "Location", "id": "loc2", "identifier": [{"value": "ICU"}], "name": "ICU"},
        _encounter("e1", "loc1"),
        _encounter("e2", "loc2"),
        _encounter("e3", None),
        vital("o1", "p1", identifier=[{"value": "lab-1"}], encounter={"reference": "Encounter/e1"}),
    ]  # fmt: skip


def site_file(
    folder: Path, location_id: str = "4001", org_id: str = "5001", profile: str = "millennium-r4"
) -> Path:
    (folder / "existing.csv").write_text(
        f"resource_type,match,value,target_id\nLocation,identifier,ED,{location_id}\n"
        "Practitioner,identifier,urn:npi|123,6001\n"
    )
    site = {
        "name": "test-site",
        "profile": profile,
        "drop": {"elements": {"Patient": ["deceased[x]", "deceasedBoolean"], "Observation": ["*"]}},
        "defaults": {
            "elements": {
                "Encounter": {
                    "serviceProvider": {"reference": f"Organization/{org_id}"},
                    "location": [{"location": {"reference": f"Location/{location_id}"}}],
                }
            }
        },
        "existing": {"file": "existing.csv"},
    }
    path = folder / "site.json"
    path.write_bytes(orjson.dumps(site))
    return path


def _by_key(entries) -> dict:
    return {e.key: e for e in entries}


def test_default_off_then_each_opt_in_recorded(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", resources(), stand_ins=("dr",))
    mill = target_profile("millennium-r4")
    with open_warehouse(wh) as con:
        plain = _by_key(build_plan(con, mill))
        site = load_site(site_file(tmp_path), mill)
        opted = _by_key(build_plan(con, mill, site=site))
    # Without a site profile nothing is dropped or filled: the resources stay not_sendable, saying why.
    assert (plain["Patient/p1"].reason, plain["Patient/p1"].detail) == (
        "backload_element_not_accepted",
        "deceasedBoolean",
    )
    assert plain["Location/loc1"].reason == "backload_type_not_writable"
    assert not any(e.changes for e in plain.values())
    p1, o1 = opted["Patient/p1"], opted["Observation/o1"]
    assert (
        p1.status == "send"
        and p1.changes == {"dropped": ["deceasedBoolean"]}
        and "deceasedBoolean" not in p1.body
    )
    assert o1.status == "send" and o1.changes == {"dropped": ["identifier"]}
    assert (opted["Location/loc1"].status, opted["Location/loc1"].server_id) == ("mapped", "4001")
    assert (opted["Practitioner/dr"].status, opted["Practitioner/dr"].server_id) == ("mapped", "6001")
    assert opted["Location/loc2"].reason == "backload_location_unmapped"
    assert reason_codes()["backload_location_unmapped"]["outcome"] == "not_sendable"
    e1, e2, e3 = opted["Encounter/e1"], opted["Encounter/e2"], opted["Encounter/e3"]
    assert e1.body["location"] == [{"location": {"reference": "Location/4001"}}]  # rewritten to the target's
    assert e1.body["participant"][0]["individual"] == {"reference": "Practitioner/6001"}
    assert e1.changes == {"defaulted": ["serviceProvider"]}  # its own location kept
    assert e3.changes == {"defaulted": ["location", "serviceProvider"]}
    assert (e2.reason, e2.detail) == ("backload_reference_not_sendable", "location[0].location")


def test_site_changes_in_plan_files_status_and_report_and_a_send(tmp_path, capsys):
    wh = build_warehouse(tmp_path / "w.duckdb", resources(), stand_ins=("dr",))
    with FhirServer("millennium") as server:
        # The tenant's own records the site maps to: they exist on the target before the back-load.
        loc, org, dr = server.seed(
            [
                {"resourceType": "Location", "name": "ED"},
                {"resourceType": "Organization", "name": "General"},
                {"resourceType": "Practitioner", "name": [{"family": "D"}]},
            ]
        )
        path = site_file(tmp_path, loc, org)
        path.with_name("existing.csv").write_text(
            f"resource_type,match,value,target_id\nLocation,identifier,ED,{loc}\nPractitioner,id,dr,{dr}\n"
        )
        plan = plan_backload(wh, "millennium-r4", tmp_path / "out", site_file=path)
        lines = [orjson.loads(x) for x in (plan.folder / "entries.ndjson").read_bytes().splitlines()]
        assert {x["warehouse_id"]: x.get("site_changes") for x in lines if x.get("site_changes")} == {
            "p1": {"dropped": ["deceasedBoolean"]},
            "o1": {"dropped": ["identifier"]},
            "e1": {"defaulted": ["serviceProvider"]},
            "e3": {"defaulted": ["location", "serviceProvider"]},
        }
        assert _send(wh, server) == {"created": 4}  # p1, e1, e3, o1
        encounters = server.search("Encounter")
        assert len(encounters) == 2
        for e in encounters:
            assert e["location"][0]["location"]["reference"] == f"Location/{loc}"
            assert e["serviceProvider"]["reference"] == f"Organization/{org}"
        assert server.search(f"Location?_id={loc}")  # the reference resolves on the target
    status = backload_status(wh, "millennium-r4")
    assert status["totals"]["mapped"] == 2 and status["reconciles"] and status["complete"]
    assert {(r["resource_type"], r["change"], r["element"]): r["count"] for r in status["site_changes"]} == {
        ("Encounter", "defaulted", "location"): 1,
        ("Encounter", "defaulted", "serviceProvider"): 2,
        ("Observation", "dropped", "identifier"): 1,
        ("Patient", "dropped", "deceasedBoolean"): 1,
    }
    html = write_report(wh, tmp_path / "report").html.read_text()
    assert 'class="backload-site"' in html and "<code>deceasedBoolean</code>" in html and ">M1<" not in html
    assert main(["backload", "status", "--warehouse", str(wh)]) == 0
    out = capsys.readouterr().out
    assert "deceasedBoolean" in out and "dropped" in out and "M1" not in out


def test_a_site_profile_for_another_target_or_a_bad_map_is_refused(tmp_path):
    mill = target_profile("millennium-r4")
    with pytest.raises(ConfigError, match="generic-r4"):
        load_site(site_file(tmp_path, profile="generic-r4"), mill)
    path = site_file(tmp_path)
    path.with_name("existing.csv").write_text("resource_type,match,value,target_id\nPatient,id,p1,9\n")
    with pytest.raises(ConfigError, match="resource_type"):
        load_site(path, mill)  # Patients are never matched by a map: identity decides who is who
    demo = load_site(SITES / "demo-millennium.json", mill)  # the shipped demo site profile is valid
    assert demo.records["Location"] and demo.drop["Observation"] and "Encounter" in demo.defaults


def test_a_contract_12_warehouse_gains_the_site_columns_in_place(tmp_path):
    wh = build_warehouse(tmp_path / "w.duckdb", resources(), stand_ins=("dr",))
    with open_warehouse(wh) as con:  # as an ehrlift of contract 12 left it
        con.execute("ALTER TABLE ops.backload_plan DROP COLUMN site_changes")
        con.execute("ALTER TABLE ops.backload_plan DROP COLUMN server_id")
        con.execute("ALTER TABLE ops.backload_plans DROP COLUMN site")
        con.execute("DELETE FROM ops.schema_version")
        con.execute("INSERT INTO ops.schema_version VALUES (12, now())")
    plan = plan_backload(wh, "millennium-r4", tmp_path / "out", site_file=site_file(tmp_path))
    with open_warehouse(wh, read_only=True) as con:
        mapped = con.execute("SELECT count(*) FROM ops.backload_plan WHERE server_id IS NOT NULL").fetchone()[
            0
        ]
        assert con.execute("SELECT max(version) FROM ops.schema_version").fetchone()[0] == SCHEMA_VERSION
    assert mapped == 2 and plan.summary["totals"]["mapped"] == 2
