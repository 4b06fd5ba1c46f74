"""Every reader fuzzed for a few seconds from the hostile cases and corpus seeds, in a limited subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fuzz.cases import HOSTILE, READERS
from tests.hostile import ROOT, bounded_env, limit_resources

# The suite's share of fuzzing, bounded: every checked-in hostile case, two corpus seeds and ten mutations
# per reader, the readers in two processes (imports once each) so two workers share them. The long
# campaign (`make fuzz`) runs minutes per reader from every seed.
GROUPS = {"files": ("ndjson", "bundle", "ccda"), "streams": ("hl7", "manifest", "mllp")}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_readers_survive_their_hostile_cases_and_mutations(group):
    readers = GROUPS[group]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.harness", *readers, "--examples", "10", "--corpus-seeds", "2"],
        capture_output=True,
        cwd=ROOT,
        env=bounded_env(2 << 30),
        preexec_fn=lambda: limit_resources(2 << 30, 120),
        timeout=300,
        check=False,
    )
    # A crash, an assertion, a hang past the CPU limit (SIGXCPU) or the memory limit all fail here.
    assert proc.returncode == 0, proc.stdout.decode()[-3000:] + proc.stderr.decode()[-3000:]
    for reader in readers:
        assert f"fuzz {reader}: 1 rounds of 10 examples, no failure" in proc.stdout.decode()


def test_the_groups_cover_every_reader():
    assert sorted(r for group in GROUPS.values() for r in group) == sorted(READERS)


def test_every_reader_has_checked_in_hostile_cases():
    assert set(HOSTILE) == set(READERS)
    assert all(len(cases) >= 5 for cases in HOSTILE.values())
