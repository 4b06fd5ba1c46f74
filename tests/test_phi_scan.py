"""The demo pipeline through the CLI (-v, progress bars on): no PHI in any output meant for people."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb

from pipelines.demo import generate_demo_data, iter_patients
from pipelines.demo.dstu2 import dstu2_patients
from pipelines.demo.hl7v2 import V2
from pipelines.demo.writer import BUNDLE_PATIENTS

PATIENTS, SEED = 10, 5
DEFECT_PATIENTS = 6  # the FHIR defect patient and one per HL7 v2 defect (pipelines/demo/*defects.py)
SALT = "phi-scan-salt-0123456789"


def demo_phi() -> dict[str, set[str]]:
    """Every identifying value the generator put into the demo sources, by kind."""
    found: dict[str, set[str]] = {k: set() for k in ("name", "birth_date", "identifier", "address", "phone")}
    cohorts = (
        ("main", PATIENTS),
        ("bundle", BUNDLE_PATIENTS),
        ("defect", DEFECT_PATIENTS),
        ("dstu2", dstu2_patients(PATIENTS)),
    )
    for cohort, count in cohorts:
        for p in iter_patients(SEED, count, cohort):
            found["name"].update({p.family, *p.given})
            found["birth_date"].update({p.birth_date.isoformat(), p.birth_date.strftime("%Y%m%d")})
            found["identifier"].update(
                {p.mrn, p.uid, *(f"V{p.mrn}{i + 1:03d}" for i in range(len(p.encounters)))}
            )
            found["address"].update({*p.address.line, p.address.city})
            found["phone"].add(p.phone)
    found["name"].add(V2["defects"]["latin1_family"])
    return found


# Identifiers, dates and phones are found anywhere, even inside a longer token ("40231093-ccd.xml");
# names and address words as whole words between non-letters, case as written ("Hill", not "hill").
SUBSTRING_KINDS = {"identifier", "birth_date", "phone"}


def scan(text: str, phi: dict[str, set[str]]) -> list[str]:
    hits = []
    for kind, values in phi.items():
        for value in values:
            if kind in SUBSTRING_KINDS:
                found = value in text
            else:
                found = re.search(rf"(?<![^\W\d_]){re.escape(value)}(?![^\W\d_])", text) is not None
            if found:
                hits.append(f"{kind}: {value}")
    return sorted(hits)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TTY_COMPATIBLE="1", COLUMNS="160", EHRLIFT_DEID_SALT=SALT)  # progress bars drawn
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "-v", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_no_phi_in_logs_progress_run_json_report_or_analyst_file(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    # The whole demo, as `ehrlift demo-data` writes it: its C-CDA files are named after MRNs.
    generate_demo_data(tmp_path / "demo", patients=PATIENTS, seed=SEED, hl7v2=True, ccda=True, dstu2=True)
    phi = demo_phi()
    sources = (tmp_path / "demo" / "sources").rglob("*")
    raw = b"".join(p.read_bytes() for p in sources if p.is_file()).decode("utf-8", "replace")
    # The scan can fail: the sources do hold these values.
    assert {"name", "birth_date", "identifier", "address", "phone"} == {
        h.split(":")[0] for h in scan(raw, phi)
    }

    warehouse = tmp_path / "data" / "warehouse.duckdb"
    run = _cli(
        "run",
        str(tmp_path / "demo" / "sources"),
        "--warehouse",
        str(warehouse),
        "--source-system",
        "demo",
        cwd=repo,
    )
    assert " INFO " in run.stderr  # -v logging was on
    assert "━" in run.stderr  # and the progress bars were drawn
    report = _cli("report", "--warehouse", str(warehouse), cwd=repo)
    sign = _cli(
        "report", "sign", "--warehouse", str(warehouse), "--reviewer", "Q. Auditor",
        "--role", "privacy officer", "--decision", "approved-with-conditions", "--note", "demo data only",
        cwd=repo,
    )  # fmt: skip
    deid = _cli(
        "deidentify", "--warehouse", str(warehouse), "--out", str(tmp_path / "analyst.duckdb"), cwd=repo
    )

    outputs = {
        "run stdout": run.stdout,
        "run stderr (logs, progress)": run.stderr,
        "report output": report.stdout + report.stderr,
        "report sign output": sign.stdout + sign.stderr,
        "deidentify output": deid.stdout + deid.stderr,
    }
    for path in (tmp_path / "data" / "runs").glob("*.json"):
        outputs[f"run JSON {path.name}"] = path.read_text()
    (report_dir,) = (tmp_path / "data" / "reports").iterdir()
    # The compliance report, its data file and the run's Data Docs (every page and asset).
    for path in sorted(report_dir.rglob("*")):
        if path.is_file():
            outputs[f"report {path.relative_to(report_dir)}"] = path.read_bytes().decode("utf-8", "replace")
    assert any(name.startswith("report data-docs/") for name in outputs)
    assert {
        "report compliance-report.html",
        "report compliance-report.data.json",
        "report compliance-report.signoff.json",  # the signed copy
    } <= set(outputs)
    # The report's new parts are there to be scanned: verdict, diff, drill-down queries, the sign-off.
    html = outputs["report compliance-report.html"]
    assert all(f'id="{part}"' in html for part in ("verdict", "diff", "signoff", "failures", "toc"))
    assert "Q. Auditor" in html and '"verdict"' in outputs["report compliance-report.data.json"]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for table in ("quarantine", "ledger", "unconsumed", "runs", "phi_access", "files", "report_signoffs"):
            # ops.files.original_name is the operator's lineage pointer back to a source file; it stays in
            # the warehouse beside the records themselves and is never shown in reports or run JSON.
            columns = "COLUMNS(* EXCLUDE (original_name))" if table == "files" else "COLUMNS(*)"
            rows = con.execute(f"SELECT {columns}::VARCHAR FROM ops.{table}").fetchall()
            outputs[f"ops.{table}"] = "\n".join(" | ".join(map(str, r)) for r in rows)
    with duckdb.connect(str(tmp_path / "analyst.duckdb"), read_only=True) as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        assert "patient" in tables and "observation" in tables
        outputs["analyst file"] = "\n".join(
            " | ".join(map(str, row))
            for t in tables
            for row in con.execute(f'SELECT COLUMNS(*)::VARCHAR FROM "{t}"').fetchall()
        )
    outputs["analyst file"] += "\n" + SALT  # sentinel checked separately below
    found = {name: scan(text, phi) for name, text in outputs.items()}
    assert {name: hits for name, hits in found.items() if hits} == {}
    assert all(SALT not in text for name, text in outputs.items() if name != "analyst file")
    analyst_bytes = (tmp_path / "analyst.duckdb").read_bytes()
    assert SALT.encode() not in analyst_bytes
