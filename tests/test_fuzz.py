"""Every reader fuzzed for a few seconds from the hostile cases and corpus seeds, in a limited subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fuzz.cases import HOSTILE, READERS
from tests.hostile import ROOT, bounded_env, limit_resources


@pytest.mark.parametrize("reader", READERS)
def test_reader_survives_its_hostile_cases_and_mutations(reader):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.harness", reader, "--examples", "15"],
        capture_output=True,
        cwd=ROOT,
        env=bounded_env(2 << 30),
        preexec_fn=lambda: limit_resources(2 << 30, 120),
        timeout=300,
        check=False,
    )
    # A crash, an assertion, a hang past the CPU limit (SIGXCPU) or the memory limit all fail here.
    assert proc.returncode == 0, proc.stdout.decode()[-3000:] + proc.stderr.decode()[-3000:]
    assert f"fuzz {reader}: 1 rounds of 15 examples, no failure" in proc.stdout.decode()


def test_every_reader_has_checked_in_hostile_cases():
    assert set(HOSTILE) == set(READERS)
    assert all(len(cases) >= 5 for cases in HOSTILE.values())
