"""Day-to-day CLI answers: listen claims to listen only once bound and warns beyond loopback;
terminology status answers for the standard systems first."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from pipelines.cli import main
from pipelines.common.errors import ExitCode
from tests.conftest import resource, write_ndjson


def test_a_busy_port_is_an_error_before_any_claim_to_listen(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["listen", "--port", str(port), "--feed-dir", str(tmp_path / "feed")])
    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG
    assert f"cannot listen on 127.0.0.1:{port}" in err and "listening for MLLP" not in err
    assert "warning" not in err  # loopback: nothing to warn about


def test_binding_beyond_loopback_is_warned(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # the port is busy, so nothing ever listens beyond loopback here
        taken.listen()
        port = taken.getsockname()[1]
        args = ["listen", "--host", "0.0.0.0", "--port", str(port), "--feed-dir", str(tmp_path / "f")]
        code = main(args)
    err = " ".join(capsys.readouterr().err.split())
    assert code == ExitCode.CONFIG
    assert "warning: --host 0.0.0.0 accepts connections from other machines" in err


def test_terminology_status_answers_for_the_standard_systems_first(tmp_path, capsys):
    src = write_ndjson(tmp_path / "src" / "p.ndjson", resource("Patient", "p1", gender="female"))
    wh = str(tmp_path / "wh.duckdb")
    assert main(["run", str(src), "--warehouse", wh, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["terminology", "status", "--warehouse", wh]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "standard code systems:"
    first = {line.split()[0]: " ".join(line.split()[1:]) for line in lines[1:5]}
    assert list(first) == ["LOINC", "RxNorm", "SNOMED", "CVX"]
    # The shipped default holds fragments of LOINC and SNOMED CT, and no RxNorm or CVX release.
    assert first["LOINC"].startswith("fragment: ") and "terminology load loinc" in first["LOINC"]
    assert first["SNOMED"].startswith("CT fragment: ") and "terminology load snomed" in first["SNOMED"]
    assert first["RxNorm"] == "not loaded: `ehrlift terminology load rxnorm <release>`"
    assert first["CVX"] == "not loaded: `ehrlift terminology load cvx <release>`"


def test_a_run_ends_by_saying_what_to_do_next(tmp_path, capsys):
    src = write_ndjson(tmp_path / "src" / "p.ndjson", resource("Patient", "p1"), b"{broken")
    wh = tmp_path / "wh.duckdb"
    assert main(["run", str(src), "--warehouse", str(wh), "--no-progress"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    run_id = out.split("run run-")[1].split()[0]
    assert f"next: compliance report: ehrlift report --warehouse {wh} --run run-{run_id}" in out
    assert f"FROM ops.quarantine WHERE run_id = 'run-{run_id}'" in out


@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["quiet", "verbose"])
def test_only_ehrlifts_own_lines_reach_the_operator(tmp_path, verbose):
    # The Great Expectations engine logs its internals at INFO; none of it may reach the terminal.
    site = tmp_path / "site.json"
    site.write_text('{"engine": "gx"}')
    src = write_ndjson(tmp_path / "src" / "p.ndjson", resource("Patient", "p1", gender="female"))
    args = [sys.executable, "-m", "pipelines.cli", "run", str(src), "--warehouse", str(tmp_path / "w.duckdb")]
    env = dict(os.environ, EHRLIFT_DQ_SITE_FILE=str(site))
    done = subprocess.run([*args, *verbose], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    loggers = {
        line.split()[3] for line in done.stderr.splitlines() if line[:2] == "20" and len(line.split()) > 3
    }
    if verbose:
        assert {"pipelines.run:", "pipelines.validate:"} <= loggers
    assert all(name.startswith(("pipelines.", "terminology.")) for name in loggers), loggers
    assert "great_expectations" not in done.stderr


def _on_a_terminal(args: list[str]) -> str:
    """What a command shows on a terminal (its stderr on a pseudo-terminal)."""
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="140")
    with subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args], stdout=subprocess.DEVNULL, stderr=slave, env=env
    ) as proc:
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the command ended and closed its side of the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=600) == 0, seen.decode(errors="replace")[-2000:]
    os.close(master)
    return seen.decode(errors="replace")


def test_an_interactive_run_shows_a_bar_with_counts_for_each_long_stage(tmp_path):
    src = tmp_path / "src"
    write_ndjson(src / "p.ndjson", *(resource("Patient", f"p{i}", gender="female") for i in range(30)))
    wh = str(tmp_path / "w.duckdb")
    screen = _on_a_terminal(["run", str(src), "--warehouse", wh])
    assert re.search(r"convert\s.*[kK]?B", screen)
    assert re.search(r"normalize\s.*30/30 resources", screen), screen[-2000:]
    assert re.search(r"load\s.*(\d+)/\1 views", screen), screen[-2000:]
    assert re.search(r"validate\s.*(\d+)/\1 suites", screen), screen[-2000:]
    screen = _on_a_terminal(["report", "--warehouse", wh])
    assert re.search(r"report\s.*3/3 steps", screen), screen[-2000:]
    screen = _on_a_terminal(["normalize", "--warehouse", wh])
    assert re.search(r"normalize\s.*30/30 resources", screen), screen[-2000:]
