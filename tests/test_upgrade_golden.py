"""Golden upgrades: one DSTU2 or STU3 resource per case upgraded to R4, compared whole.

Each case is tests/golden/upgrade/<release>-<case>/input.json; expected.json holds the R4 resources.
Regenerate after a deliberate change with `make golden`, then review the diff like code.
"""

from __future__ import annotations

import os

import pytest
import simplejson

from pipelines.convert.fhir.upgrade import upgrade
from pipelines.fhir_versions import candidates
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "upgrade"
CASES = sorted(p for p in GOLDEN.iterdir() if (p / "input.json").is_file())
REGENERATE = os.environ.get("EHRLIFT_REGENERATE_GOLDEN") == "1"
RELEASES = {"dstu2": "1.0", "stu3": "3.0"}


def _dump(value) -> str:
    return simplejson.dumps(value, use_decimal=True, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_upgrade(case):
    release = RELEASES[case.name.split("-")[0]]
    source = simplejson.loads((case / "input.json").read_text(), use_decimal=True)
    assert release in candidates(source)  # every input is a valid shape of its release
    got = _dump(upgrade(source, release))
    expected = case / "expected.json"
    if REGENERATE:
        expected.write_text(got)
    assert expected.exists(), f"{case.name}: no expected.json; run `make golden`"
    assert got == expected.read_text(), f"{case.name} differs: run `make golden` and review the diff"


def test_every_upgraded_type_has_a_golden_case():
    from pipelines.convert.fhir.upgrade.base import resource_types

    covered = {
        (RELEASES[c.name.split("-")[0]], simplejson.loads((c / "input.json").read_text())["resourceType"])
        for c in CASES
    }
    for rtype in resource_types()["upgraded"]["1.0"]:
        assert ("1.0", rtype) in covered, rtype


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_output_is_valid_r4(case):
    """The closest pydantic check of R4 shapes: fhir.resources' R4B models (R4 itself is not shipped)."""
    from fhir.resources.R4B import get_fhir_model_class

    for res in simplejson.loads((case / "expected.json").read_text()):
        get_fhir_model_class(res["resourceType"]).model_validate(res)
