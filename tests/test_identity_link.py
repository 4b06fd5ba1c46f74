"""Patient linking: each rule, guard and threshold; conflicts; person records; review round trip; re-runs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import duckdb
import orjson
import pytest

from pipelines.common.warehouse import ensure_resource_table, open_warehouse
from pipelines.identity import identify
from pipelines.identity.config import default_folder, load_config
from pipelines.identity.decide import classify
from pipelines.identity.review import export_review, import_decisions

MRN = "urn:oid:2.16.840.1.113883.3.9999.1"
MRN_ALIAS = "urn:oid:2.16.840.1.113883.3.7207"
SSN = "http://hl7.org/fhir/sid/us-ssn"


def patient(
    pid: str, given: str = "Margaret", family: str = "Okafor", birth: str = "1961-04-23", **kw
) -> dict:
    """A source Patient; keywords override gender, line, zip, phone, ids [(system, value)], links, updated."""
    res = {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"lastUpdated": kw.get("updated", "2024-01-01T00:00:00Z")},
        "identifier": [{"system": s, "value": v} for s, v in kw.get("ids", [])],
        "name": [{"family": family, "given": [given]}],
        "gender": kw.get("gender", "female"),
        "birthDate": birth,
        "telecom": [{"system": "phone", "value": kw.get("phone", "617-555-0142")}],
        "address": [
            {"line": [kw.get("line", "12 Heron Way")], "city": "Boston", "postalCode": kw.get("zip", "02118")}
        ],
    }
    if "links" in kw:
        res["link"] = [{"other": {"reference": f"Patient/{o}"}, "type": t} for o, t in kw["links"]]
    return res


def load(con: duckdb.DuckDBPyConnection, *rows: tuple[str, dict]) -> None:
    """Insert (format, Patient) rows as if landed from a file of that format."""
    ensure_resource_table(con, "Patient")
    for fmt, res in rows:
        sha = f"file-{fmt}"
        con.execute(
            "INSERT INTO ops.files SELECT ?, 1, ?, NULL, 'test', 'x', 'x', 'r0', now() "
            "WHERE NOT EXISTS (SELECT 1 FROM ops.files WHERE file_sha256 = ?)",
            [sha, fmt, sha],
        )
        con.execute(
            "INSERT INTO fhir.\"Patient\" VALUES (?, ?, 'test', ?, ?, 0, 'r0', ?, ?, false)",
            [res["id"], orjson.dumps(res).decode(), res["id"], sha, res["id"], res["meta"]["lastUpdated"]],
        )


@pytest.fixture
def con(tmp_path: Path):
    c = open_warehouse(tmp_path / "w.duckdb")
    yield c
    c.close()


def links(con) -> dict[tuple[str, str], tuple[str, str | None, str]]:
    rows = con.execute(
        "SELECT left_patient_id, right_patient_id, method, rule, decision FROM ops.identity_links"
    )
    return {(a, b): (m, r, d) for a, b, m, r, d in rows.fetchall()}


def persons(con) -> dict[str, str]:
    return dict(con.execute("SELECT patient_id, person_id FROM ops.person_map").fetchall())


def rules_folder(tmp_path: Path, **changes: dict) -> Path:
    """A copy of the shipped identity data with some files' keys changed."""
    folder = tmp_path / "identity-rules"
    shutil.copytree(default_folder(), folder)
    for name, values in changes.items():
        data = orjson.loads((folder / f"{name}.json").read_bytes())
        data.update(values)
        (folder / f"{name}.json").write_bytes(orjson.dumps(data))
    return folder


def test_same_identifier_through_an_assigning_authority_alias_links(con):
    load(
        con,
        ("hl7v2", patient("a", ids=[(MRN, "40001")])),
        ("ccda", patient("b", "Peggy", "Smith", "1950-01-01", ids=[(MRN_ALIAS, "40001")], zip="99999")),
    )
    identify(con, "r1")
    assert links(con)[("a", "b")] == ("rule", "same_identifier", "link")
    assert persons(con) == {"a": "a", "b": "a"}


def test_an_untrusted_system_does_not_link_on_its_own(con):
    load(
        con,
        ("fhir-ndjson", patient("a", ids=[("urn:oid:1.2.3", "7")])),
        ("fhir-ndjson", patient("b", "Chen", "Wei", "1990-02-02", ids=[("urn:oid:1.2.3", "7")], zip="60601")),
    )
    identify(con, "r1")
    assert ("a", "b") not in links(con) or links(con)[("a", "b")][2] != "link"
    assert len(set(persons(con).values())) == 2


def test_hl7_merge_and_patient_link_rules(con):
    load(
        con,
        ("hl7v2", patient("old", "Ann", "Lee", "1970-05-05", links=[("new", "replaced-by")], zip="10001")),
        ("hl7v2", patient("new", "Zoe", "Park", "1980-06-06", zip="20002")),
        ("fhir-ndjson", patient("x", "Omar", "Ali", "1990-07-07", links=[("y", "seealso")], zip="30003")),
        ("fhir-ndjson", patient("y", "Hana", "Kim", "2000-08-08", zip="40004")),
    )
    identify(con, "r1")
    found = links(con)
    assert found[("new", "old")] == ("rule", "hl7_merge", "link")
    assert found[("x", "y")] == ("rule", "patient_link_seealso", "review")
    assert persons(con)["old"] == persons(con)["new"]
    assert persons(con)["x"] != persons(con)["y"]


def test_never_link_across_a_known_conflict_without_review(con):
    load(
        con,
        ("hl7v2", patient("a", ids=[(MRN, "1"), (SSN, "900-11-2222")])),
        ("fhir-ndjson", patient("b", ids=[(MRN, "2"), (SSN, "900-11-2222")])),
        ("hl7v2", patient("c", "Grace", "Novak", "1944-02-29", ids=[(MRN, "3")], zip="01608")),
        ("ccda", patient("d", "Grace", "Novak", "1944-02-29", ids=[(MRN_ALIAS, "4")], zip="01608")),
    )
    identify(con, "r1")
    found = links(con)
    assert found[("a", "b")] == ("rule", "same_identifier+known_conflict", "review")
    assert found[("c", "d")] == ("model", "known_conflict", "review")
    assert len(set(persons(con).values())) == 4


def test_model_links_nicknames_transpositions_and_swapped_dates(con):
    load(
        con,
        ("hl7v2", patient("a", "William", "Brown", "1975-03-08", gender="male")),
        ("ccda", patient("b", "Bill", "Brown", "1975-03-08", gender="male")),
        ("fhir-ndjson", patient("c", "Brown", "William", "1975-03-08", gender="male")),
        ("ccda", patient("d", "William", "Brown", "1975-08-03", gender="male")),
    )
    identify(con, "r1")
    found = links(con)
    for pair in (("a", "b"), ("a", "c"), ("a", "d")):
        assert found[pair][:1] == ("model",) and found[pair][2] == "link", pair
    assert len(set(persons(con).values())) == 1


def test_twins_and_namesakes_stay_apart(con):
    load(
        con,
        ("hl7v2", patient("t1", "Mary", "Okafor", "2001-09-17")),
        ("hl7v2", patient("t2", "Ruth", "Okafor", "2001-09-17")),
        ("hl7v2", patient("t3", "Owen", "Okafor", "2001-09-17", gender="male")),
        ("hl7v2", patient("p1", "Mary", "Okafor", "1971-09-17")),
        # Both twins' names entered the wrong way round in one source: read back by the given-name list.
        ("ccda", patient("s1", "Okafor", "Mary", "2001-09-17")),
        ("ccda", patient("s2", "Okafor", "Ruth", "2001-09-17")),
    )
    identify(con, "r1")
    found = links(con)
    assert found[("t1", "t2")] == ("model", "possible_twin", "no_link")
    assert found[("t1", "t3")][2] == "no_link" and found[("t1", "t3")][1] in (
        "possible_twin",
        "possible_twin_other_sex",
    )
    assert found[("p1", "t1")] == ("model", "generation_gap", "no_link")
    mapped = persons(con)
    assert (mapped["s1"], mapped["s2"]) == (mapped["t1"], mapped["t2"])
    assert len(set(mapped.values())) == 4


def test_twins_with_names_the_wrong_way_round_go_to_review_never_link(con, tmp_path):
    """Twins Emily and Angela Scott, each recorded once with the names swapped and misspelt: "Scott" is a
    given name too, so the records cannot be turned back; they share the 'given' and differ in a
    'family' that is (a misspelling of) a given name on both sides."""
    rows = (
        ("hl7v2", patient("e1", "Scott", "Emaly", "1941-10-05")),
        ("ccda", patient("a1", "Scott", "Antela", "1941-10-05")),
        # a married name is not a given name: the same woman's records still link
        ("hl7v2", patient("m1", "Maria", "Okafor", "1980-02-11", zip="02119", line="7 Elm St")),
        ("ccda", patient("m2", "Maria", "Lindqvist", "1980-02-11", zip="02119", line="7 Elm St")),
    )
    load(con, *rows)
    identify(con, "r1")
    found = links(con)
    assert found[("a1", "e1")] == ("model", "possible_twin_transposed", "review")
    assert found[("m1", "m2")][2] == "link"
    mapped = persons(con)
    assert mapped["a1"] != mapped["e1"] and mapped["m1"] == mapped["m2"]
    # without the guard the model links the twins: the rule, not the model, keeps them apart
    guards = [g for g in load_config().guards if g["name"] != "possible_twin_transposed"]
    identify(con, "r2", rules_folder(tmp_path, guards={"guards": guards}), force=True)
    assert links(con)[("a1", "e1")] == ("model", None, "link")
    # the similarity that marks a family field as a given name is data
    shutil.rmtree(tmp_path / "identity-rules")
    identify(con, "r3", rules_folder(tmp_path, thresholds={"given_like_similarity": 0.95}), force=True)
    assert links(con)[("a1", "e1")] == ("model", None, "link")


def test_thresholds_decide_link_review_and_no_link(con, tmp_path):
    rows = (("hl7v2", patient("a", "Elena", "Muñoz")), ("ccda", patient("b", "Elena", "Munoz", zip="02119")))
    load(con, *rows)
    identify(con, "r1")
    assert links(con)[("a", "b")][2] == "link"
    identify(con, "r2", rules_folder(tmp_path, thresholds={"link": 0.9999999999}))
    assert links(con)[("a", "b")] == ("model", None, "review")
    shutil.rmtree(tmp_path / "identity-rules")
    identify(con, "r3", rules_folder(tmp_path, thresholds={"link": 1.0, "review": 0.9999999999}))
    assert links(con)[("a", "b")] == ("model", None, "no_link")
    thresholds = {"link": 0.9, "review": 0.5}
    assert [classify(s, thresholds) for s in (0.95, 0.9, 0.7, 0.5, 0.2)] == [
        "link",
        "link",
        "review",
        "review",
        "no_link",
    ]


def test_cluster_never_joins_a_conflict_through_a_third_record(con):
    load(
        con,
        ("hl7v2", patient("a", ids=[(MRN, "1")])),
        ("fhir-ndjson", patient("b")),
        ("hl7v2", patient("c", ids=[(MRN, "2")])),
    )
    identify(con, "r1")
    found = links(con)
    assert found[("a", "c")][2] == "review"
    assert "cluster_conflict" in (found[("a", "b")][1] or "") + (found[("b", "c")][1] or "")
    assert persons(con)["a"] != persons(con)["c"]


def test_person_record_follows_the_survivorship_rules(con):
    load(
        con,
        (
            "ccda",
            patient(
                "doc",
                "Maggie",
                "Okafor",
                ids=[(MRN_ALIAS, "9"), ("urn:oid:9", "x")],
                line="1 New Rd",
                updated="2025-06-01T00:00:00Z",
            ),
        ),
        (
            "hl7v2",
            patient(
                "adt", "Margaret", "Okafor", ids=[(MRN, "9")], line="5 Old St", updated="2020-01-01T00:00:00Z"
            ),
        ),
    )
    identify(con, "r1")
    row = con.execute("SELECT person_id, resource, members FROM ops.person_records").fetchall()
    assert len(row) == 1 and row[0][0] == "adt" and row[0][2] == 2
    res = orjson.loads(row[0][1])
    assert res["id"] == "adt"
    assert res["name"][0]["given"] == ["Margaret"]  # the ADT feed's demographics over the document's
    assert res["address"][0]["line"] == ["1 New Rd"]  # the most recent address
    assert {(i["system"], i["value"]) for i in res["identifier"]} == {
        (MRN, "9"),
        (MRN_ALIAS, "9"),
        ("urn:oid:9", "x"),
    }
    assert res["link"] == [{"other": {"reference": "Patient/doc"}, "type": "replaces"}]
    assert con.execute("SELECT patient_id, survivor FROM ops.person_map ORDER BY 1").fetchall() == [
        ("adt", True),
        ("doc", False),
    ]


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_review_round_trip_and_decisions_survive_reruns(con, tmp_path, suffix):
    load(
        con,
        ("hl7v2", patient("a", ids=[(MRN, "1")])),
        ("ccda", patient("b", ids=[(MRN_ALIAS, "2")])),
        ("hl7v2", patient("c", "Ann", "Lee", "1970-05-05", links=[("d", "seealso")], zip="10001")),
        ("hl7v2", patient("d", "Zoe", "Park", "1980-06-06", zip="20002")),
    )
    identify(con, "r1")
    out = tmp_path / f"review{suffix}"
    assert export_review(con, out) == 2
    if suffix == ".csv":
        text = out.read_text()
        assert "12 Heron Way" not in text and "617-555-0142" not in text  # street and phone stay home
        filled = text.replace(",,\n", ",no_link,dana\n", 1).replace(",,\n", ",link,\n", 1)
        out.write_text(filled)
    else:
        from openpyxl import load_workbook

        book = load_workbook(out)
        sheet = book.active
        sheet.cell(2, 15, "no_link")
        sheet.cell(2, 16, "dana")
        sheet.cell(3, 15, "link")
        book.save(out)
    result = import_decisions(con, out, reviewer="lee")
    assert (result.accepted, result.undecided, result.rejected) == (2, 0, [])
    for run in ("r2", "r3"):
        identify(con, run)
        decided = {k: v for k, v in links(con).items() if v[0] == "review"}
        assert sorted(v[2] for v in decided.values()) == ["link", "no_link"]
    reviewers = con.execute(
        "SELECT DISTINCT reviewer FROM ops.identity_links WHERE method = 'review'"
    ).fetchall()
    assert sorted(r[0] for r in reviewers) == ["dana", "lee"]
    assert import_decisions(con, out, reviewer="lee").accepted == 2  # the same file replaces its own rows
    assert con.execute("SELECT count(*) FROM ops.identity_decisions").fetchall()[0][0] == 2


def test_import_rejects_bad_rows_by_number(con, tmp_path):
    load(con, ("hl7v2", patient("a")), ("ccda", patient("b", "Zed", "Quill", "1999-09-09")))
    bad = tmp_path / "decisions.csv"
    bad.write_text(
        "left_patient_id,right_patient_id,decision,reviewer\na,b,maybe,kim\na,zzz,link,kim\na,b,,\na,b,no_link,\n"
    )
    result = import_decisions(con, bad)
    assert (result.accepted, result.undecided, result.rejected) == (0, 1, [2, 3, 5])


def test_a_reviewer_no_link_wins_over_a_rule(con, tmp_path):
    load(con, ("hl7v2", patient("a", ids=[(MRN, "1")])), ("ccda", patient("b", ids=[(MRN_ALIAS, "1")])))
    decisions = tmp_path / "d.csv"
    decisions.write_text("left_patient_id,right_patient_id,decision,reviewer\nb,a,no_link,kim\n")
    import_decisions(con, decisions)
    identify(con, "r1")
    assert links(con)[("a", "b")] == ("review", "reviewer_decision", "no_link")
    assert persons(con)["a"] != persons(con)["b"]


def test_rerunning_adds_nothing(con):
    load(
        con,
        ("hl7v2", patient("a", ids=[(MRN, "1")])),
        ("ccda", patient("b", "Peggy", ids=[(MRN_ALIAS, "1")])),
        ("fhir-ndjson", patient("c", "Wei", "Chen", "1990-01-01", gender="male", zip="60601")),
    )
    tables = ("identity_links", "person_map", "person_records", "fact_duplicates", "identity_models")

    def snapshot():
        return {
            t: sorted(map(str, con.execute(f"SELECT * EXCLUDE (run_id) FROM ops.{t}").fetchall()))
            for t in tables
            if t != "identity_links" and t != "identity_models"
        } | {t: con.execute(f"SELECT count(*) FROM ops.{t}").fetchall()[0][0] for t in tables}

    identify(con, "r1")
    first = snapshot()
    identify(con, "r1")
    assert snapshot() == first
    assert first["identity_models"] == 1


def test_no_phi_in_logs(con, caplog):
    load(
        con,
        ("hl7v2", patient("a", "Philippa", "Zelenko", "1933-12-01", ids=[(MRN, "55501")])),
        ("ccda", patient("b", "Pippa", "Zelenko", "1933-01-12", ids=[(MRN_ALIAS, "55502")])),
    )
    with caplog.at_level(logging.DEBUG):
        identify(con, "r1")
    text = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert caplog.records
    for value in ("Philippa", "PHILIPPA", "Pippa", "Zelenko", "ZELENKO", "1933", "55501", "02118", "Heron"):
        assert value not in text


def test_bad_rules_stop_with_a_config_error(tmp_path):
    from pipelines.common.errors import ConfigError

    with pytest.raises(ConfigError, match="thresholds"):
        load_config(rules_folder(tmp_path, thresholds={"link": 0.5, "review": 0.9}))


def test_placeholder_identifiers_neither_link_nor_conflict(con, tmp_path):
    load(
        con,
        ("hl7v2", patient("a", "Ann", "Lee", "1970-05-05", ids=[(SSN, "999-99-9999")], zip="10001")),
        ("ccda", patient("b", "Zoe", "Park", "1980-06-06", ids=[(SSN, "999999999")], zip="20002")),
        ("hl7v2", patient("c", "Omar", "Ali", "1990-07-07", ids=[(MRN, "77")], zip="30003")),
        ("ccda", patient("d", "Hana", "Kim", "2000-08-08", ids=[(MRN_ALIAS, "77")], zip="40004")),
    )
    identify(con, "r1", rules_folder(tmp_path, rules={"max_patients_per_identifier": 1}))
    assert len(set(persons(con).values())) == 4  # the shared MRN is held by more than one: a placeholder
    shutil.rmtree(tmp_path / "identity-rules")
    identify(con, "r2")
    assert len(set(persons(con).values())) == 3  # the default allows it; the all-nines SSN never links
