"""Build the shipped default terminology (terminology/default/) and systems.csv from public sources.

Sources, each pinned and recorded with its sha256 in default/sources.json:
  * HL7 Terminology (THO), npm package hl7.terminology.r4 (CC0): every CodeSystem with content, the
    NamingSystems (URIs, OIDs) and table 0396, the SNOMED CT Global Patient Set value set (CC BY 4.0),
    the common UCUM units value set, and the LOINC codes enumerated in its value sets;
  * ICD-10-CM from the PyPI package simple-icd-10-cm (the CDC's public-domain tabular list);
  * UCUM atoms from the ucum-essence.xml that the PyPI package ucumvert vendors;
  * the US Core codes ehrlift's converters write themselves (us_core_codes.csv, a curated fragment), so
    that what ehrlift emits is never counted unmapped.
Run `make terminology-default` (needs npm and pip; nothing else is downloaded). The two PyPI packages go
into a throw-away virtualenv: they are build inputs, not runtime dependencies of ehrlift.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "default"
THO_PACKAGE = "hl7.terminology.r4@7.0.1"
ICD_PACKAGE = "simple-icd-10-cm==1.5.0"
UCUM_PACKAGE = "ucumvert==0.3.2"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
# THO concept statuses that take a code out of use; "deprecated" codes stay valid but discouraged.
INACTIVE_WORDS = {"retired", "inactive"}
_SEMANTIC_TAG = re.compile(r"\(([^()]+)\)\s*$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- fetching -----------------------------------------------------------------------------------------
def fetch_tho(work: Path) -> tuple[Path, Path]:
    """npm pack the THO package into `work`; returns (tarball, unpacked package folder)."""
    subprocess.run(["npm", "pack", THO_PACKAGE, "--silent"], cwd=work, check=True, capture_output=True)  # noqa: S603, S607
    tgz = next(work.glob("hl7.terminology.r4-*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(work, filter="data")
    return tgz, work / "package"


def fetch_pypi_inputs(work: Path) -> dict:
    """Install the ICD-10-CM and UCUM packages into a temporary venv and extract what the build needs."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", ICD_PACKAGE, UCUM_PACKAGE], check=True)  # noqa: S603
    out = work / "pypi.json"
    subprocess.run([str(py), __file__, "--extract-pypi", str(out)], check=True)  # noqa: S603
    return json.loads(out.read_text(encoding="utf-8"))


def extract_pypi(out: Path) -> None:
    """Runs inside the build venv: dump ICD-10-CM codes and the ucum-essence.xml location to JSON."""
    import importlib.metadata as md

    import simple_icd_10_cm as icd  # type: ignore[import-not-found]
    import ucumvert  # type: ignore[import-not-found]

    data_dir = Path(icd.__file__).parent / "data"
    code_list = next(data_dir.glob("code-list-*.txt"))
    codes = []
    for code in icd.get_all_codes(True):
        if icd.is_chapter_or_block(code):
            continue
        codes.append(
            {
                "code": code,
                "display": icd.get_description(code),
                "billable": icd.is_leaf(code),
                "parent": icd.get_parent(code) if not icd.is_category(code) else None,
                "inclusion": icd.get_inclusion_term(code),
            }
        )
    essence = Path(ucumvert.__file__).parent / "vendor" / "ucum-essence.xml"
    result = {
        "icd": {
            "package": "simple-icd-10-cm",
            "package_version": md.version("simple-icd-10-cm"),
            "release": code_list.stem.removeprefix("code-list-"),
            "sha256": sha256_file(code_list),
            "codes": codes,
        },
        "ucum": {
            "package": "ucumvert",
            "package_version": md.version("ucumvert"),
            "essence_xml": essence.read_text(encoding="ascii"),
            "sha256": sha256_file(essence),
        },
    }
    out.write_text(json.dumps(result), encoding="utf-8")


# -- the registry's systems.csv ----------------------------------------------------------------------
def build_systems(pkg: Path, curated_csv: Path) -> list[dict]:
    """Join THO NamingSystems, CodeSystems and table 0396 with the curated rows (which win)."""
    rows: dict[str, dict] = {}
    uri_owner: dict[str, str] = {}

    def row(uri: str, name: str) -> dict:
        uri = uri_owner.get(uri, uri)
        if uri not in rows:
            rows[uri] = {
                "uri": uri,
                "name": name,
                "v2_0396": [],
                "oids": [],
                "alt_uris": [],
                "standard": None,
            }
            uri_owner[uri] = uri
        return rows[uri]

    def add(lst: list, value: str) -> None:
        if value and value not in lst:
            lst.append(value)

    ns_names: dict[str, set[str]] = defaultdict(set)
    for f in sorted(pkg.glob("NamingSystem-*.json")):
        ns = json.loads(f.read_text(encoding="utf-8"))
        if ns.get("kind") != "codesystem":
            continue
        ids = ns.get("uniqueId", [])
        uris = [u["value"] for u in ids if u.get("type") == "uri"]
        if not uris:
            continue
        uris.sort(
            key=lambda u: (not any(x.get("preferred") and x["value"] == u for x in ids), "sid/" not in u)
        )
        known = next((uri_owner[u] for u in uris if u in uri_owner), None)
        r = row(known or uris[0], ns.get("title") or ns.get("name") or uris[0])
        if ns.get("name"):
            ns_names[ns["name"].casefold()].add(r["uri"])
        for u in uris:
            if u != r["uri"]:
                add(r["alt_uris"], u)
            uri_owner.setdefault(u, r["uri"])
        for u in ids:
            if u.get("type") == "oid":
                add(r["oids"], u["value"])
            elif u.get("type") == "other":
                add(r["v2_0396"], u["value"])
    for f in sorted(pkg.glob("CodeSystem-*.json")):
        cs = json.loads(f.read_text(encoding="utf-8"))
        url = cs.get("url")
        if not url or cs.get("content") in ("not-present", "supplement"):
            continue
        r = row(url, cs.get("title") or cs.get("name") or url)
        r["standard"] = "yes"  # defined by HL7 with its content: the standard for its element
        for ident in cs.get("identifier", []):
            value = ident.get("value", "")
            if value.startswith("urn:oid:"):
                add(r["oids"], value[8:])
        m = re.fullmatch(r"http://terminology\.hl7\.org/CodeSystem/v2-(\d{4})", url)
        if m:
            add(r["v2_0396"], f"HL7{m.group(1)}")
    # Table 0396 names whose THO URI is literally .../CodeSystem/<name> (THO minted those URIs from them),
    # or whose NamingSystem bears the name (DCM, IcdO for ICDO).
    by_tail = defaultdict(set)
    for uri in uri_owner:
        if "/CodeSystem/" in uri:
            by_tail[uri.rsplit("/", 1)[1].casefold()].add(uri_owner[uri])
    v2 = json.loads((pkg / "CodeSystem-v2-0396.json").read_text(encoding="utf-8"))
    curated = list(csv.DictReader(curated_csv.open(newline="", encoding="utf-8")))
    curated_names = {n for c in curated for n in c["v2_0396"].split("|") if n}
    unmapped = []
    for concept in v2.get("concept", []):
        code = concept["code"]
        if " " in code or code in curated_names or code in ("99zzz", "L") or "nnnn" in code:
            continue
        targets = by_tail.get(code.casefold(), set()) or ns_names.get(code.casefold(), set())
        if len(targets) == 1:
            add(rows[next(iter(targets))]["v2_0396"], code)
        elif not any(code in r["v2_0396"] for r in rows.values()):
            unmapped.append({"uri": "", "name": concept.get("display", code)[:120], "v2_0396": [code]})
    for c in curated:
        r = row(c["uri"], c["name"])
        r["name"] = c["name"]
        for col in ("v2_0396", "oids", "alt_uris"):
            for value in c[col].split("|"):
                add(r[col], value)
        r["standard"] = c["standard"]
        r["check"] = c["check"]
        r["pattern"] = c["pattern"]
    # A curated row claims its names, OIDs and URIs: remove them from any other row.
    for c in curated:
        owner = rows[uri_owner.get(c["uri"], c["uri"])]
        claimed = {v for col in ("v2_0396", "oids", "alt_uris") for v in c[col].split("|") if v}
        for r in rows.values():
            if r is owner:
                continue
            for col in ("v2_0396", "oids", "alt_uris"):
                r[col] = [v for v in r[col] if v not in claimed]
    merged_away = {u for u, owner in uri_owner.items() if owner != u}
    # THO has a few OIDs (placeholders) and names on more than one system: they identify none of them.
    for col in ("oids", "v2_0396", "alt_uris"):
        counts: dict[str, int] = defaultdict(int)
        for uri, r in rows.items():
            if uri not in merged_away:
                for v in r[col]:
                    counts[v] += 1
        for r in rows.values():
            r[col] = [v for v in r[col] if counts[v] == 1]
    out = []
    for r in sorted(rows.values(), key=lambda r: r["uri"]):
        if r["uri"] in merged_away:
            continue
        out.append(
            {
                "uri": r["uri"],
                "name": r["name"],
                "v2_0396": "|".join(r["v2_0396"]),
                "oids": "|".join(r["oids"]),
                "alt_uris": "|".join(r["alt_uris"]),
                "standard": r.get("standard") or "no",
                "check": r.get("check") or "",
                "pattern": r.get("pattern") or "",
            }
        )
    for u in sorted(unmapped, key=lambda r: r["v2_0396"][0]):
        out.append(
            {"uri": "", "name": u["name"], "v2_0396": u["v2_0396"][0], "oids": "", "alt_uris": ""}
            | {"standard": "no", "check": "", "pattern": ""}
        )
    return out


def write_systems(rows: list[dict], path: Path) -> None:
    cols = ["uri", "name", "v2_0396", "oids", "alt_uris", "standard", "check", "pattern"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


# -- the default tables ----------------------------------------------------------------------------------
class Tables:
    def __init__(self) -> None:
        self.concepts: list[tuple] = []
        self.designations: list[tuple] = []
        self.properties: list[tuple] = []
        self.releases: list[tuple] = []
        self._seen: set[tuple[str, str]] = set()

    def concept(self, system, code, display, status, detail, version) -> bool:
        if (system, code) in self._seen:
            return False
        self._seen.add((system, code))
        self.concepts.append((system, code, display, status, detail, version))
        return True


def tho_code_systems(pkg: Path, t: Tables, source: str) -> None:
    for f in sorted(pkg.glob("CodeSystem-*.json")):
        cs = json.loads(f.read_text(encoding="utf-8"))
        url, version = cs.get("url"), cs.get("version") or "unversioned"
        if not url or cs.get("content") not in ("complete", "fragment") or cs.get("supplements"):
            continue
        start = len(t.concepts)
        stack = [(c, None) for c in reversed(cs.get("concept", []))]
        while stack:
            c, parent = stack.pop()
            code = c.get("code")
            if code is None:
                continue
            props = {p["code"]: p for p in c.get("property", [])}
            word = _prop_value(props.get("status")) or (
                "retired" if _prop_value(props.get("inactive")) else None
            )
            if word is None and "deprecationDate" in props:
                word = "deprecated"
            status = "inactive" if (word or "").lower() in INACTIVE_WORDS else "active"
            if t.concept(url, code, c.get("display"), status, word, version):
                if parent is not None:
                    t.properties.append((url, code, "parent", parent))
                if _prop_value(props.get("notSelectable")) in ("true", True):
                    t.properties.append((url, code, "notSelectable", "true"))
                for d in c.get("designation", []):
                    if d.get("value"):
                        use = (d.get("use") or {}).get("code")
                        t.designations.append((url, code, d["value"], use))
            stack.extend((child, code) for child in reversed(c.get("concept", [])))
        n = len(t.concepts) - start
        if n:
            t.releases.append((url, version, source, cs.get("content"), n))


def _prop_value(p: dict | None):
    if not p:
        return None
    for key, value in p.items():
        if key.startswith("value"):
            return str(value).lower() if isinstance(value, bool) else value
    return None


def tho_value_set_concepts(
    pkg: Path, t: Tables, system: str, version: str, pattern: str = "ValueSet-*.json"
) -> int:
    n = 0
    for f in sorted(pkg.glob(pattern)):
        vs = json.loads(f.read_text(encoding="utf-8"))
        for inc in vs.get("compose", {}).get("include", []):
            if inc.get("system") != system:
                continue
            for c in inc.get("concept", []):
                display = c.get("display")
                # The GPS gives fully specified names; the display is the name without its semantic tag,
                # as the RF2 loader does when no preferred term is known.
                shown = _SEMANTIC_TAG.sub("", display).strip() if system == SNOMED and display else display
                if t.concept(system, c["code"], shown, "active", None, version):
                    n += 1
                    if system == SNOMED and display:
                        t.designations.append((system, c["code"], display, "fsn"))
                        m = _SEMANTIC_TAG.search(display)
                        if m:
                            t.properties.append((system, c["code"], "semantic_tag", m.group(1)))
    return n


def icd10cm(data: dict, t: Tables, source: str) -> None:
    version = data["release"]
    n = 0
    for c in data["codes"]:
        if t.concept(ICD10CM, c["code"], c["display"], "active", None, version):
            n += 1
            t.properties.append((ICD10CM, c["code"], "billable", "true" if c["billable"] else "false"))
            if c["parent"]:
                t.properties.append((ICD10CM, c["code"], "parent", c["parent"]))
            for term in c.get("inclusion") or []:
                t.designations.append((ICD10CM, c["code"], term, "inclusion"))
    t.releases.append((ICD10CM, version, source, "complete", n))


def ucum(essence_xml: str, pkg: Path, t: Tables, source: str) -> str:
    root = ET.fromstring(essence_xml)  # noqa: S314 - pinned build input, no entities
    ns = {"u": "http://unitsofmeasure.org/ucum-essence"}
    version = f"{root.get('version')} ({root.get('revision-date')})"
    common = {}
    vs = json.loads((pkg / "ValueSet-ucum-common.json").read_text(encoding="utf-8"))
    for inc in vs["compose"]["include"]:
        for c in inc.get("concept", []):
            common[c["code"]] = c.get("display")
    n = 0
    for kind in ("base-unit", "unit"):
        for el in root.findall(f"u:{kind}", ns):
            code = el.get("Code")
            name = el.findtext("u:name", default=None, namespaces=ns)
            if code and t.concept(UCUM, code, common.get(code) or name, "active", None, version):
                n += 1
                t.properties.append((UCUM, code, "atom", kind))
                if el.get("class"):
                    t.properties.append((UCUM, code, "class", el.get("class")))
                prop = el.findtext("u:property", default=None, namespaces=ns)
                if prop:
                    t.properties.append((UCUM, code, "property", prop))
    for code, display in common.items():
        if t.concept(UCUM, code, display, "active", None, version):
            n += 1
            t.properties.append((UCUM, code, "common", "true"))
    t.releases.append((UCUM, version, source, "fragment", n))
    return version


US_CORE_CODES = HERE / "us_core_codes.csv"
US_CORE_SOURCE = "HL7 FHIR US Core (curated: the codes ehrlift writes, us_core_codes.csv)"


def us_core_codes(t: Tables, path: Path = US_CORE_CODES) -> None:
    """The US Core codes ehrlift's converters write (document, care plan and problem categories)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if t.concept(row["system"], row["code"], row["display"], "active", None, row["version"]):
                counts[(row["system"], row["version"])] += 1
    for (system, version), n in sorted(counts.items()):
        t.releases.append((system, version, US_CORE_SOURCE, "fragment", n))


def us_core_entry() -> dict[str, str]:
    return {
        "name": "HL7 FHIR US Core code systems (curated in terminology/us_core_codes.csv)",
        "version": "6.1.0",
        "licence": "CC0-1.0",
        "sha256": sha256_file(US_CORE_CODES),
        "used": "the category codes ehrlift's C-CDA converter writes (a fragment)",
    }


def write_tables(t: Tables, out: Path) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = {
        "concepts": ["system", "code", "display", "status", "status_detail", "version"],
        "designations": ["system", "code", "term", "use"],
        "properties": ["system", "code", "property", "value"],
        "releases": ["system", "version", "source", "content", "concepts"],
    }
    shas = {}
    for name, cols in schemas.items():
        rows = sorted(getattr(t, name), key=lambda r: tuple("" if v is None else str(v) for v in r))
        arrays = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
        table = pa.table(arrays)
        path = out / f"{name}.parquet"
        pq.write_table(table, path, compression="zstd", compression_level=19, use_dictionary=True)
        shas[name] = sha256_file(path)
    return shas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extract-pypi", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.extract_pypi:
        extract_pypi(args.extract_pypi)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ehrlift-terminology-") as tmp:
        work = Path(tmp)
        tgz, pkg = fetch_tho(work)
        tho_sha = sha256_file(tgz)
        pypi = fetch_pypi_inputs(work)
        tho_meta = json.loads((pkg / "package.json").read_text(encoding="utf-8"))
        tho_name = f"hl7.terminology.r4 {tho_meta['version']}"
        write_systems(build_systems(pkg, HERE / "systems_curated.csv"), HERE / "systems.csv")

        t = Tables()
        tho_code_systems(pkg, t, tho_name)
        gps = json.loads((pkg / "ValueSet-snomed-intl-gps.json").read_text(encoding="utf-8"))
        gps_version = gps["compose"]["include"][0].get("version") or gps.get("version")
        gps_sha = sha256_file(pkg / "ValueSet-snomed-intl-gps.json")
        # Only the GPS: it is the SNOMED CT content published for use under CC BY 4.0.
        n = tho_value_set_concepts(pkg, t, SNOMED, gps_version, "ValueSet-snomed-intl-gps.json")
        source = f"SNOMED CT Global Patient Set (value set snomed-intl-gps in {tho_name})"
        t.releases.append((SNOMED, gps_version, source, "fragment", n))
        loinc_version = f"codes enumerated in {tho_name} value sets"
        n = tho_value_set_concepts(pkg, t, LOINC, loinc_version)
        t.releases.append((LOINC, loinc_version, tho_name, "fragment", n))
        icd_source = f"{pypi['icd']['package']} {pypi['icd']['package_version']}"
        icd10cm(pypi["icd"], t, icd_source)
        ucum_source = f"{pypi['ucum']['package']} {pypi['ucum']['package_version']} ucum-essence.xml"
        ucum_version = ucum(pypi["ucum"]["essence_xml"], pkg, t, ucum_source)
        us_core_codes(t)
        shas = write_tables(t, args.out)

    content_id = hashlib.sha256(json.dumps(shas, sort_keys=True).encode()).hexdigest()
    sources = {
        "default_version": content_id[:16],
        "content_sha256": content_id,
        "tables": shas,
        "sources": [
            {
                "name": "hl7.terminology.r4",
                "version": tho_meta["version"],
                "licence": "CC0-1.0",
                "sha256": tho_sha,
                "used": "CodeSystems with content, NamingSystems, v2 table 0396, LOINC codes in value sets",
            },
            {
                "name": "SNOMED CT Global Patient Set (ValueSet snomed-intl-gps in hl7.terminology.r4)",
                "version": gps_version,
                "licence": "CC-BY-4.0 (SNOMED International)",
                "sha256": gps_sha,
                "used": "concept ids and fully specified names (a subset: content=fragment)",
            },
            {
                "name": "ICD-10-CM via simple-icd-10-cm",
                "version": f"{pypi['icd']['release']} (package {pypi['icd']['package_version']})",
                "licence": "ICD-10-CM: public domain (CDC/NCHS); package: MIT",
                "sha256": pypi["icd"]["sha256"],
                "used": "categories and codes, descriptions, inclusion terms, billable flag",
            },
            {
                "name": "UCUM ucum-essence.xml via ucumvert",
                "version": f"{ucum_version} (package {pypi['ucum']['package_version']})",
                "licence": "UCUM: Regenstrief Institute UCUM licence (free, with notice); package: MIT",
                "sha256": pypi["ucum"]["sha256"],
                "used": "base units and units (atoms) plus the HL7 common UCUM units value set",
            },
            us_core_entry(),
        ],
    }
    (args.out / "sources.json").write_text(json.dumps(sources, indent=2) + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {len(t.concepts)} concepts to {args.out} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
