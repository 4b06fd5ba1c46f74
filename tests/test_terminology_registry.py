"""Code-system registry: table 0396 names, OIDs, URI variants, local and unknown systems, site aliases."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.common.errors import ConfigError
from terminology.registry import Registry, read_site_aliases

LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@pytest.fixture(scope="module")
def reg() -> Registry:
    return Registry.default()


@pytest.mark.parametrize(
    ("raw", "uri"),
    [
        ("LN", LOINC),
        ("ln", LOINC),
        ("SCT", SCT),
        ("RXNORM", RXNORM),
        ("RXN", RXNORM),
        ("I10C", "http://hl7.org/fhir/sid/icd-10-cm"),
        ("I10", "http://hl7.org/fhir/sid/icd-10"),
        ("I9CM", "http://hl7.org/fhir/sid/icd-9-cm"),
        ("I9C", "http://hl7.org/fhir/sid/icd-9-cm"),
        ("CVX", "http://hl7.org/fhir/sid/cvx"),
        ("MVX", "http://hl7.org/fhir/sid/mvx"),
        ("NDC", "http://hl7.org/fhir/sid/ndc"),
        ("UCUM", "http://unitsofmeasure.org"),
        ("C4", "http://www.ama-assn.org/go/cpt"),
        ("CPT4", "http://www.ama-assn.org/go/cpt"),
        ("HCPCS", "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"),
        ("SNM", "http://terminology.hl7.org/CodeSystem/snm"),  # pre-SNOMED CT edition: not sct
        ("SNM3", "http://terminology.hl7.org/CodeSystem/SNM3"),
        ("HL70001", "http://terminology.hl7.org/CodeSystem/v2-0001"),
        ("CDCREC", "urn:oid:2.16.840.1.113883.6.238"),
        ("DCM", "http://dicom.nema.org/resources/ontology/DCM"),  # by its NamingSystem's name
        ("ICDO3", "http://terminology.hl7.org/CodeSystem/icd-o-3"),
        ("2.16.840.1.113883.6.1", LOINC),
        ("urn:oid:2.16.840.1.113883.6.96", SCT),
        ("URN:OID:2.16.840.1.113883.6.88", RXNORM),
        ("urn:oid:2.16.840.1.113883.6.90", "http://hl7.org/fhir/sid/icd-10-cm"),
        ("urn:oid:2.16.840.1.113883.12.292", "http://hl7.org/fhir/sid/cvx"),
        ("http://loinc.org", LOINC),
        ("https://loinc.org/", LOINC),
        ("http://LOINC.org", LOINC),
        ("http://snomed.info/sct/731000124108", SCT),
        ("http://snomed.info/sct/900000000000207008/version/20240101", SCT),
        ("http://hl7.org/fhir/sid/icd-10-cm|2024", "http://hl7.org/fhir/sid/icd-10-cm"),
        ("http://terminology.hl7.org/CodeSystem/icd10CM", "http://hl7.org/fhir/sid/icd-10-cm"),
        ("http://terminology.hl7.org/CodeSystem/v2-0203", "http://terminology.hl7.org/CodeSystem/v2-0203"),
        (" LN ", LOINC),
        # DSTU2/STU3 spellings of code systems that R4 moved to HL7 Terminology
        ("http://hl7.org/fhir/v2/0203", "http://terminology.hl7.org/CodeSystem/v2-0203"),
        ("http://hl7.org/fhir/v3/ActCode", "http://terminology.hl7.org/CodeSystem/v3-ActCode"),
        (
            "http://hl7.org/fhir/observation-category",
            "http://terminology.hl7.org/CodeSystem/observation-category",
        ),
    ],
)
def test_canonical(reg: Registry, raw: str, uri: str) -> None:
    assert reg.canonical(raw) == uri
    assert not reg.is_local(raw)


@pytest.mark.parametrize("raw", ["99LAB", "99zzz", "99", "L", "l", "LOCAL"])
def test_local_systems(reg: Registry, raw: str) -> None:
    assert reg.canonical(raw) is None
    assert reg.is_local(raw)
    assert reg.resolve(raw).status == "local"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("FOO", "unknown"),
        ("urn:oid:1.2.3.4.5", "unknown"),
        ("http://example.org/fhir/CodeSystem/mine", "unknown"),
        ("http://hl7.org/fhir/v2/9999", "unknown"),  # no such v2 table: not renamed blindly
        ("http://hl7.org/fhir/ValueSet/diagnostic-service-sections", "unknown"),  # a value set, not a system
        ("IHELAW", "no-uri"),  # a table 0396 name for which HL7 Terminology publishes no URI
        ("HL70136", "no-uri"),  # an HL7 table that HL7 Terminology does not publish
        ("", "empty"),
        (None, "empty"),
    ],
)
def test_unknown_is_reported_never_invented(reg: Registry, raw: str | None, status: str) -> None:
    res = reg.resolve(raw)
    assert (res.status, res.uri) == (status, None)
    assert reg.canonical(raw) is None and not reg.is_local(raw)


def test_info(reg: Registry) -> None:
    loinc = reg.info("LN")
    assert loinc is not None
    assert (loinc.uri, loinc.standard, loinc.check) == (LOINC, True, "loinc")
    sct = reg.info("urn:oid:2.16.840.1.113883.6.96")
    assert sct is not None and (sct.check, sct.standard) == ("snomed", True)
    ndc = reg.info("http://hl7.org/fhir/sid/ndc")
    assert ndc is not None and (ndc.standard, ndc.check) == (False, None)
    v2 = reg.info("http://terminology.hl7.org/CodeSystem/v2-0203")
    assert v2 is not None and v2.standard
    assert reg.info("FOO") is None and reg.info("99LAB") is None


def test_ambiguous_case_folding_is_refused(tmp_path: Path) -> None:
    systems = tmp_path / "systems.csv"
    systems.write_text(
        "uri,name,v2_0396,oids,alt_uris,standard,check,pattern\n"
        "http://a.example/x,A,Ab,,,no,,\n"
        "http://b.example/y,B,AB,,,no,,\n",
        encoding="utf-8",
    )
    reg = Registry.from_files(systems)
    assert reg.canonical("Ab") == "http://a.example/x"
    assert reg.canonical("AB") == "http://b.example/y"
    assert reg.canonical("ab") is None  # two systems fold to "ab": case-insensitive only where safe


def test_site_alias_file(tmp_path: Path) -> None:
    aliases = tmp_path / "site_aliases.csv"
    aliases.write_text(
        "alias,uri\nLABCORP-LOINC,LN\nOurLab,local\nWARDCODES,\nMYSYS,http://hospital.example/cs/mysys\n",
        encoding="utf-8",
    )
    reg = Registry.default(aliases)
    assert reg.canonical("LABCORP-LOINC") == LOINC
    assert reg.resolve("labcorp-loinc").via == "alias"
    assert reg.is_local("OurLab") and reg.is_local("WARDCODES")
    assert reg.canonical("MYSYS") == "http://hospital.example/cs/mysys"
    assert Registry.default().canonical("LABCORP-LOINC") is None  # the site file only applies where given


def test_bad_site_alias_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "aliases.csv"
    bad.write_text("alias,uri\nX,LN\n,LN\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"aliases\.csv line 3: empty alias"):
        read_site_aliases(bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name,system\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="alias,uri"):
        read_site_aliases(wrong)
    with pytest.raises(ConfigError, match="not found"):
        Registry.default(tmp_path / "missing.csv")


def test_shipped_systems_file_is_consistent(reg: Registry) -> None:
    # One OID and one table 0396 name resolve to exactly one system.
    seen_oids: dict[str, str] = {}
    seen_names: dict[str, str] = {}
    for info in reg.systems.values():
        for oid in info.oids:
            assert seen_oids.setdefault(oid, info.uri) == info.uri, oid
        for name in info.v2_names:
            assert seen_names.setdefault(name, info.uri) == info.uri, name
    assert len(reg.systems) > 1000
