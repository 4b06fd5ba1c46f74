"""Hostile source file names and declaration files: recorded escaped, never crashing the run."""

from __future__ import annotations

import os
import sys

import orjson
import pytest

from pipelines.common.errors import ConfigError, ExitCode
from pipelines.intake.names import safe_name
from pipelines.run import run_pipeline
from tests.conftest import ledger, resource
from tests.hostile import run_bounded

BAD_UTF8 = b"bad\xffname.ndjson"
ANSI = b"red\x1b[31mX\x1b[0m.ndjson"


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_names_with_invalid_utf8_or_escapes_land_under_escaped_names(tmp_path, make_config, warehouse):
    src = tmp_path / "src"
    src.mkdir()
    for n, name in enumerate((BAD_UTF8, ANSI)):
        with open(os.path.join(os.fsencode(src), name), "wb") as fh:
            fh.write(orjson.dumps(resource("Patient", f"p{n}")) + b"\n")
    run = run_pipeline(make_config(src))
    rows = ledger(warehouse())
    assert sorted(r[0] for r in rows) == ["bad\\xffname.ndjson", "red\\x1b[31mX\\x1b[0m.ndjson"]
    assert run.reconciles
    for path in (tmp_path / "data").rglob("*"):
        if path.suffix in (".json", ".html", ".md", ".csv", ".txt"):
            assert b"\x1b" not in path.read_bytes(), path.name


def test_safe_name():
    assert safe_name("plain.ndjson") == "plain.ndjson"
    assert safe_name(os.fsdecode(b"a\xfe.hl7")) == "a\\xfe.hl7"
    assert safe_name("a\x1b]0;title\x07b\u009b") == "a\\x1b]0;title\\x07b\\x9b"
    assert safe_name("Müller.xml") == "Müller.xml"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not a UTF-8 text file"),
        ("*.ndjson,dstu2\n".encode("utf-16"), "is not a UTF-8 text file"),
        (b"*.ndjson,dstu2\n\xff\xfe", "is not a UTF-8 text file"),
        (b",dstu2\n", "row 1 is not `glob,release`"),
    ],
)
def test_a_declaration_file_that_is_not_utf8_csv_is_a_config_error(tmp_path, make_config, content, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ndjson").write_bytes(orjson.dumps(resource("Patient", "p")) + b"\n")
    (src / ".fhir-release.csv").write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        run_pipeline(make_config(src))


def test_a_binary_declaration_file_exits_5_without_a_traceback(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ndjson").write_bytes(orjson.dumps(resource("Patient", "p")) + b"\n")
    (src / ".fhir-release.csv").write_bytes(bytes(range(256)))
    proc, _ = run_bounded(["run", str(src), "--warehouse", str(tmp_path / "w.duckdb"), "--no-progress"])
    assert proc.returncode == ExitCode.CONFIG == 5
    assert b"Traceback" not in proc.stderr
    assert b".fhir-release.csv is not a UTF-8 text file" in proc.stdout + proc.stderr
