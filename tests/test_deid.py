"""De-identification rules, value by value and row by row, the analyst file, and the PHI access audit."""

from __future__ import annotations

from datetime import date

import duckdb
import orjson
import pyarrow as pa
import pytest

from pipelines.common.errors import ConfigError, ExitCode
from pipelines.common.warehouse import open_warehouse
from pipelines.deid import Deidentifier, deidentify, load_rules
from pipelines.deid.export import transform_batch
from pipelines.deid.rules import truncate
from pipelines.run import run_pipeline
from tests.conftest import resource, write_ndjson

SALT = "test-salt-0123456789"
AS_OF = date(2026, 6, 15)
RESTRICTED = [
    "036",
    "059",
    "063",
    "102",
    "203",
    "556",
    "692",
    "790",
    "821",
    "823",
    "830",
    "831",
    "878",
    "879",
    "884",
    "890",
    "893",
]


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def test_rules_cover_exactly_the_shipped_views(rules):
    from pipelines.common.paths import shipped

    shipped_views = {p.stem for p in (shipped("schemas") / "views").glob("*.json")}
    # views.patient_source is derived by the identity stage (one row per source Patient, with its person)
    assert set(rules.views) == shipped_views | {"patient_source"}
    assert rules.views["patient_source"].columns["person_id"].action == "hash"
    assert sorted(rules.restricted_zip3) == RESTRICTED
    patient = rules.views["patient"].columns
    for direct in ("family", "given", "address_city", "marital_status_text"):
        assert patient[direct].action == "drop"
    assert (patient["id"].action, patient["mrn_value"].action) == ("hash", "hash")
    assert patient["address_postal_code"].action == "zip3"


def test_hash_is_salted_stable_and_not_the_value(rules):
    a, b = Deidentifier(rules, SALT), Deidentifier(rules, SALT + "x")
    assert a.hash("10023456") == a.hash("10023456") != b.hash("10023456")
    assert len(a.hash("10023456")) == 32 and "10023456" not in a.hash("10023456")
    assert a.hash(None) is None
    assert a.hash(12) == a.hash("12")


def test_dates_to_year(rules):
    d = Deidentifier(rules, SALT, "year", AS_OF)
    cases = {
        "1957-03-04": "1957",
        "2021-07-09T10:11:12-05:00": "2021",
        "2020-02": "2020",
        "1999": "1999",
        "not a date": None,
        None: None,
    }
    assert {v: d.date(v, "p1") for v in cases} == cases


def test_dates_shift_per_patient(rules):
    d = Deidentifier(rules, SALT, "shift", AS_OF)
    s1, s2 = d.shift_days("p1"), d.shift_days("p2")
    assert (
        s1 != 0
        and abs(s1) <= rules.max_shift_days
        and s1 == Deidentifier(rules, SALT, "shift").shift_days("p1")
    )
    assert s1 != s2  # two patients almost never share an offset; these two do not
    moved = date.fromisoformat(d.date("2021-07-09", "p1"))
    assert (moved - date(2021, 7, 9)).days == s1
    # time of day and zone are kept; the interval between two dates of one patient is kept
    assert d.date("2021-07-09T10:11:12-05:00", "p1") == moved.isoformat() + "T10:11:12-05:00"
    later = date.fromisoformat(d.date("2021-08-08", "p1"))
    assert (later - moved).days == 30
    assert d.date("2020-02", "p1") == "2020"  # partial: year only
    assert d.date("2021-07-09", None) == "2021"  # no patient to shift by: year only


def test_zip3_and_the_low_population_rule(rules):
    d = Deidentifier(rules, SALT)
    cases = {
        "02118": "021",
        "02118-1234": "021",
        "021181234": "021",
        "03601": "000",
        "89301": "000",
        "10201": "000",
        "10001": "100",
        " 06103 ": "061",
        "K1A 0B1": None,
        "123": None,
        None: None,
    }
    assert {v: d.zip3(v) for v in cases} == cases
    for prefix in RESTRICTED:
        assert d.zip3(prefix + "00") == "000"


def test_ages_over_89_are_grouped_and_their_birth_dates_suppressed(rules):
    d = Deidentifier(rules, SALT, "year", AS_OF)
    assert d.age("1936-06-16") == 89  # 89 until the day before the 90th birthday
    assert (d.age("1936-06-15"), d.over_top("1936-06-15")) == (90, True)
    assert (d.age("1901-01-01"), d.over_top("1901-01-01")) == (90, True)  # top-coded: never 125
    assert (d.age("2026-06-15"), d.over_top("2026-06-15")) == (0, False)
    assert d.age("1930-01-01", death="2010-01-01") == 80  # age at death, not today
    assert d.over_top("1935") is True  # year only: at least 90
    assert d.age("1950") is None and d.over_top("1950") is None  # year only, not certainly 90+: unknown
    assert d.age(None) is None
    # Typed views give date objects; a partial date comes back to its precision first.
    assert d.age(date(1936, 6, 16)) == 89
    assert truncate(date(1935, 1, 1), "year") == "1935" and truncate(date(1935, 3, 1), "month") == "1935-03"
    assert d.birth_date("1936-06-16", None, "p1") == "1936"
    assert d.birth_date("1936-06-15", None, "p1") is None
    assert d.birth_date("1935", None, "p1") is None
    shift = Deidentifier(rules, SALT, "shift", AS_OF)
    assert shift.birth_date("1936-06-15", None, "p1") is None
    assert shift.birth_date("1980-01-01", None, "p1") == shift.date("1980-01-01", "p1")


def test_patient_rows_row_by_row(rules):
    d = Deidentifier(rules, SALT, "year", AS_OF)
    view = rules.views["patient"]
    rows = [
        {
            "id": "p1",
            "active": True,
            "gender": "female",
            "birth_date": "1957-03-04",
            "deceased": False,
            "deceased_date_time": None,
            "family": "Garcia",
            "given": "Ana María",
            "mrn_system": "urn:mrn",
            "mrn_value": "10023456",
            "address_city": "Boston",
            "address_state": "MA",
            "address_postal_code": "02118",
            "address_country": "US",
            "marital_status_system": "s",
            "marital_status_code": "M",
            "marital_status_display": "Married",
            "marital_status_text": "married to Tom Garcia",
            "race_code": None,
            "ethnicity_code": None,
            "birth_sex": "F",
            "language_code": "es",
            "managing_organization_id": "org1",
            "last_updated": "2024-05-06T07:08:09Z",
        },
        {
            "id": "p2",
            "active": None,
            "gender": "male",
            "birth_date": "1920-01-01",
            "deceased": True,
            "deceased_date_time": "2025-02-03",
            "family": "Lee",
            "given": "Wei",
            "mrn_system": None,
            "mrn_value": None,
            "address_city": None,
            "address_state": "WY",
            "address_postal_code": "82301",
            "address_country": "US",
            "marital_status_system": None,
            "marital_status_code": None,
            "marital_status_display": None,
            "marital_status_text": None,
            "race_code": None,
            "ethnicity_code": None,
            "birth_sex": None,
            "language_code": None,
            "managing_organization_id": None,
            "last_updated": None,
        },
    ]
    out = transform_batch(pa.RecordBatch.from_pylist(rows), view, d).to_pylist()
    assert out == [
        {
            "id": d.hash("p1"),
            "active": True,
            "gender": "female",
            "birth_date": "1957",
            "age": 69,
            "age_90_plus": False,
            "deceased": False,
            "deceased_date_time": None,
            "mrn_value": d.hash("10023456"),
            "address_state": "MA",
            "address_postal_code": "021",
            "address_country": "US",
            "marital_status_system": "s",
            "marital_status_code": "M",
            "marital_status_display": "Married",
            "race_code": None,
            "ethnicity_code": None,
            "birth_sex": "F",
            "language_code": "es",
            "managing_organization_id": "org1",
            "last_updated": "2024",
        },
        {
            "id": d.hash("p2"),
            "active": None,
            "gender": "male",
            "birth_date": None,
            "age": 90,
            "age_90_plus": True,
            "deceased": True,
            "deceased_date_time": "2025",
            "mrn_value": None,
            "address_state": "WY",
            "address_postal_code": "000",
            "address_country": "US",
            "marital_status_system": None,
            "marital_status_code": None,
            "marital_status_display": None,
            "race_code": None,
            "ethnicity_code": None,
            "birth_sex": None,
            "language_code": None,
            "managing_organization_id": None,
            "last_updated": None,
        },
    ]


def test_observation_rows_shift_by_their_patient(rules):
    d = Deidentifier(rules, SALT, "shift", AS_OF)
    view = rules.views["observation"]
    names = list(view.columns)
    base = dict.fromkeys(names)
    row = base | {
        "id": "o1",
        "patient_id": "p1",
        "encounter_id": "e1",
        "code": "2345-7",
        "effective_date_time": "2021-07-09T10:00:00Z",
        "value_quantity_value": 5.4,
        "value_string": "called Dr. Smith at 617-555-0100",
    }
    schema = pa.schema([(n, pa.float64() if n == "value_quantity_value" else pa.string()) for n in names])
    (out,) = transform_batch(pa.RecordBatch.from_pylist([row], schema=schema), view, d).to_pylist()
    assert "value_string" not in out
    assert (out["id"], out["patient_id"], out["encounter_id"]) == (d.hash("o1"), d.hash("p1"), d.hash("e1"))
    assert out["code"] == "2345-7" and out["value_quantity_value"] == 5.4
    assert out["effective_date_time"] == d.date("2021-07-09T10:00:00Z", "p1") != "2021-07-09T10:00:00Z"


def _warehouse(tmp_path, make_config):
    patients = [
        resource(
            "Patient",
            "p1",
            name=[{"family": "Okonkwo", "given": ["Adaeze"]}],
            birthDate="1931-02-03",
            gender="female",
            identifier=[{"system": "urn:mrn", "value": "MRN-7781"}],
            address=[{"line": ["12 Elm St"], "city": "Springfield", "state": "MA", "postalCode": "01103"}],
        ),
        resource("Patient", "p2", birthDate="1980-05-06", gender="male"),
    ]
    obs = resource(
        "Observation",
        "o1",
        status="final",
        subject={"reference": "Patient/p1"},
        code={"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        effectiveDateTime="2024-01-02T03:04:05Z",
    )
    config = make_config(write_ndjson(tmp_path / "src" / "x.ndjson", *patients, obs))
    run_pipeline(config)
    return config


def test_deidentify_writes_a_separate_file_without_phi_and_audits(tmp_path, make_config):
    config = _warehouse(tmp_path, make_config)
    out = tmp_path / "analyst" / "study.duckdb"
    result = deidentify(config.warehouse, out, salt=SALT, as_of=AS_OF)
    assert result.out == out and result.date_mode == "year"
    assert result.tables["patient"] == 2 and result.tables["observation"] == 1
    with duckdb.connect(str(out), read_only=True) as con:
        patients = con.execute(
            "SELECT birth_date, age, age_90_plus, address_postal_code FROM patient ORDER BY age"
        ).fetchall()
        assert patients == [("1980", 46, False, None), (None, 90, True, "011")]
        everything = " ".join(
            str(v)
            for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
            for row in con.execute(f'SELECT * FROM "{t}"').fetchall()
            for v in row
        )
        assert con.execute(
            "SELECT count(*) FROM observation o JOIN patient p ON o.patient_id = p.id"
        ).fetchone() == (1,)
    for phi in (
        "Okonkwo",
        "Adaeze",
        "1931",
        "1931-02-03",
        "MRN-7781",
        "12 Elm St",
        "Springfield",
        "01103",
        "2024-01-02",
        SALT,
    ):
        assert phi not in everything
    assert not list(out.parent.glob("*.partial*"))
    with open_warehouse(config.warehouse, read_only=True) as con:
        rows = con.execute(
            "SELECT os_user, command, access, run_id, tables, detail FROM ops.phi_access ORDER BY accessed_at"
        ).fetchall()
    (run_row, deid_row) = rows
    assert run_row[1:4] == ("run", "write", config.run_id)
    assert {"table": "fhir.Patient", "rows": 2} in orjson.loads(run_row[4])
    assert deid_row[1:4] == ("deidentify", "read", None)
    assert {"table": "views.patient", "rows": 2} in orjson.loads(deid_row[4])
    assert deid_row[5] == "wrote de-identified views to study.duckdb"
    assert deid_row[0]


def test_deidentify_fails_closed(tmp_path, make_config, rules, monkeypatch):
    config = _warehouse(tmp_path, make_config)
    monkeypatch.delenv(rules.salt_env, raising=False)
    with pytest.raises(ConfigError, match="no de-identification salt") as exc:
        deidentify(config.warehouse, tmp_path / "a.duckdb")
    assert exc.value.exit_code == ExitCode.CONFIG
    with pytest.raises(ConfigError, match="at least 16"):
        deidentify(config.warehouse, tmp_path / "a.duckdb", salt="short")
    with open_warehouse(config.warehouse) as con:
        con.execute("ALTER TABLE views.patient ADD COLUMN nickname VARCHAR")
    with pytest.raises(
        ConfigError, match=r"views.patient has columns without a de-identification rule: nickname"
    ):
        deidentify(config.warehouse, tmp_path / "a.duckdb", salt=SALT)
    assert not (tmp_path / "a.duckdb").exists()


def test_deidentify_command(tmp_path, make_config, monkeypatch, capsys):
    from pipelines.cli import main

    config = _warehouse(tmp_path, make_config)
    out = tmp_path / "a.duckdb"
    monkeypatch.delenv("EHRLIFT_DEID_SALT", raising=False)
    assert main(["deidentify", "--warehouse", str(config.warehouse), "--out", str(out)]) == 5
    assert "EHRLIFT_DEID_SALT" in capsys.readouterr().err
    monkeypatch.setenv("EHRLIFT_DEID_SALT", SALT)
    assert (
        main(["deidentify", "--warehouse", str(config.warehouse), "--out", str(out), "--dates", "shift"]) == 0
    )
    assert "patient: 2 rows" in capsys.readouterr().out
    with duckdb.connect(str(out), read_only=True) as con:
        assert con.execute("SELECT value FROM deid_manifest WHERE key = 'date_mode'").fetchone() == ("shift",)
        (birth,) = con.execute("SELECT birth_date FROM patient WHERE NOT age_90_plus").fetchone()
        assert len(birth) == 10 and birth != "1980-05-06"
