"""`ehrlift identity link|review|import|status` on a small warehouse: exit statuses and what they print."""

from __future__ import annotations

from pipelines.cli import main
from pipelines.common.warehouse import open_warehouse
from tests.test_identity_link import MRN, MRN_ALIAS, load, patient


def test_link_review_import_status(tmp_path, capsys):
    wh = tmp_path / "w.duckdb"
    with open_warehouse(wh) as con:
        load(
            con,
            ("hl7v2", patient("a", ids=[(MRN, "1")])),
            ("ccda", patient("b", ids=[(MRN_ALIAS, "2")])),
            ("hl7v2", patient("c", "Ann", "Lee", "1970-05-05", ids=[(MRN, "3")], zip="10001")),
        )
    assert main(["identity", "link", "--warehouse", str(wh)]) == 0
    printed = capsys.readouterr().out
    assert "3 source patients -> 3 persons" in printed and "review 1" in printed
    assert "Margaret" not in printed and "Okafor" not in printed
    review = tmp_path / "review.csv"
    assert main(["identity", "review", str(review), "--warehouse", str(wh)]) == 0
    rows = review.read_text().splitlines()
    assert len(rows) == 2 and rows[1].endswith(",,")
    review.write_text(rows[0] + "\n" + rows[1][:-2] + ",link,kim\n")
    assert main(["identity", "import", str(review), "--warehouse", str(wh)]) == 0
    assert main(["identity", "link", "--warehouse", str(wh)]) == 0
    assert "3 source patients -> 2 persons" in capsys.readouterr().out
    assert main(["identity", "status", "--warehouse", str(wh)]) == 0
    status = capsys.readouterr().out
    assert "persons: 2" in status and "reviewer_decisions: 1" in status and "awaiting_review: 0" in status
    with open_warehouse(wh, read_only=True) as con:
        audit = con.execute("SELECT count(*) FROM ops.phi_access WHERE command = 'identity link'").fetchall()
        assert audit[0][0] == 2
        assert con.execute("SELECT count(*) FROM views.patient").fetchall()[0][0] == 2


def test_import_exit_statuses(tmp_path, capsys):
    wh = tmp_path / "w.duckdb"
    with open_warehouse(wh) as con:
        load(con, ("hl7v2", patient("a")))
    assert main(["identity", "import", str(tmp_path / "missing.csv"), "--warehouse", str(wh)]) == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("left_patient_id,right_patient_id,decision,reviewer\na,nope,link,kim\n")
    assert main(["identity", "import", str(bad), "--warehouse", str(wh)]) == 5
    assert "rows rejected" in capsys.readouterr().out
    bad.write_text("left,right\na,b\n")
    assert main(["identity", "import", str(bad), "--warehouse", str(wh)]) == 5
