"""The HL7 builders' compiled build (pipelines/backload/hl7/native.py): used only while it matches the source,
and byte for byte the same messages as the source modules, on the golden plan and on irregular results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.backload.hl7 import native
from tests.backload_builders import build_warehouse
from tests.hl7back_builders import resources

ROOT = Path(__file__).resolve().parents[1]
LOINC = {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]}

# Results the usual lab feed does not have: components, absent values, comparators, ranges, every delimiter.
IRREGULAR = [
    {"status": "final", "code": LOINC, "valueQuantity": {"value": 5.0, "comparator": "<", "unit": "mg/dL"}},
    {"status": "final", "code": LOINC, "dataAbsentReason": {"coding": [{"code": "unknown"}]}},
    {
        "status": "amended",
        "code": LOINC,
        "valueRange": {"low": {"value": 1, "unit": "mm"}, "high": {"value": 2.5, "unit": "mm"}},
        "referenceRange": [{"text": "a|b^c&d~e\\f\ng"}],
    },
    {"status": "final", "code": {"text": "free ^ text"}, "valueString": "x|y^z&w~v\\u\r\nt"},
    {
        "status": "preliminary",
        "effectivePeriod": {"start": "2024-03-04T05:06:07.123456+01:00"},
        "code": LOINC,
        "component": [
            {"code": LOINC, "valueQuantity": {"value": 120, "unit": "mm[Hg]", "code": "mm[Hg]"}},
            {"code": LOINC, "dataAbsentReason": {"text": "n/a"}},
            {"valueQuantity": {"value": 1}},  # no code: not a component OBX
        ],
        "note": [{"text": "first^note"}, {}],
    },
    {
        "code": LOINC,
        "valueQuantity": {"value": 1e-07, "system": "http://unitsofmeasure.org", "code": "g"},
        "referenceRange": [{"low": {"value": 0.5}}],
        "interpretation": [{"coding": [{"code": "L"}]}, {"text": "no code"}],
        "method": {"coding": [{"system": "http://snomed.info/sct", "code": "702659008"}]},
        "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "368209003", "display": "arm"}]},
    },
    {"status": "final", "valueBoolean": False, "valueInteger": 3},
    {"status": "cancelled", "code": {"coding": [{"code": "no-system"}]}, "valueDateTime": "2024-02"},
    {},
]

# What the builders make of them, at 2.5.1 then 2.3.1 (OBX-1 from 1, OBX-4 sub-id 1).
EXPECTED = {
    "2.5.1": [
        ["OBX|1|SN|2345-7^Glucose^LN|1|<^5.0|mg/dL|||||F"],
        ["OBX|1||2345-7^Glucose^LN|1|||||||X"],
        ["OBX|1|SN|2345-7^Glucose^LN|1|^1^-^2.5|mm|a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\g||||C"],
        ["OBX|1|TX|^free \\S\\ text|1|x\\F\\y\\S\\z\\T\\w\\R\\v\\E\\u\\.br\\t||||||F"],
        [
            "OBX|1|NM|2345-7^Glucose^LN|1.1|120|mm[Hg]|||||P|||20240304050607.1234+0100",
            "NTE|1||first\\S\\note",
            "OBX|2||2345-7^Glucose^LN|1.2|||||||X|||20240304050607.1234+0100",
        ],
        ["OBX|1|NM|2345-7^Glucose^LN|1|1e-07|g^^UCUM|0.5-|L|||F||||||702659008^^SCT|||368209003^arm^SCT"],
        ["OBX|1|NM||1|3||||||F"],
        ["OBX|1|TS|no-system|1|202402||||||X"],
        ["OBX|1|||1|||||||F"],
    ],
}


def _run(mode: str, wh: Path, root: Path) -> dict:
    """Build in a fresh interpreter, the compiled build on or off ("0"): the plan and the irregular OBX."""
    script = """
import json, sys
import duckdb
from pathlib import Path
from pipelines.backload.hl7 import segments
from pipelines.backload.hl7.encode import Coder
from pipelines.backload.hl7.plan import build_plan
from pipelines.backload.hl7.segments import Header
from pipelines.backload.profiles import target_profile
wh, root, shapes = sys.argv[1], Path(sys.argv[2]), json.loads(sys.stdin.read())
out = {"module": segments.__spec__.origin, "plans": {}, "obx": {}}
for version in ("2.5.1", "2.3.1"):
    for alias in (True, False):
        with duckdb.connect(wh, read_only=True) as con:
            plan = build_plan(con, "millennium-r4", ["adt", "oru", "vxu", "mdm"], Header(version=version),
                              "20250101120000+0000", {}, root, alias=alias)
        rows = [[p.status, p.reason, p.detail, p.control_id, p.text] for p in plan]
        out["plans"][f"{version} {alias}"] = rows
    coder = Coder(target_profile("millennium-r4").codings)
    out["obx"][version] = [segments.obxs(s, 1, 1, coder, version)[0] for s in shapes]
print(json.dumps(out))
"""
    env = {**os.environ, native.OFF: mode}
    done = subprocess.run(
        [sys.executable, "-c", script, str(wh), str(root)],
        input=json.dumps(IRREGULAR), capture_output=True, text=True, check=True, cwd=ROOT, env=env,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_the_compiled_builders_build_every_message_as_the_source_does(tmp_path):
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the source modules run, and there is no build to compare")
    native.build()  # what make setup does (nothing when built): an edit that does not compile fails here
    wh = build_warehouse(tmp_path / "w.duckdb", resources())
    compiled, source = _run("1", wh, tmp_path), _run("0", wh, tmp_path)
    assert compiled["module"].endswith(".so") and ".build" in compiled["module"]
    assert source["module"] == str(ROOT / "pipelines" / "backload" / "hl7" / "segments.py")
    assert compiled["plans"] == source["plans"]
    assert compiled["obx"] == source["obx"]
    assert compiled["obx"]["2.5.1"] == EXPECTED["2.5.1"]
    sent = [p for p in compiled["plans"]["2.5.1 True"] if p[0] == "send"]
    assert {p[4][:3] for p in sent} == {"MSH"} and len(sent) >= 4


def test_the_irregular_results_at_2_3_1():
    """2.3.1 keeps OBX-2 for an absent value (an empty ST) and has no OBX-20."""
    from pipelines.backload.hl7 import segments
    from pipelines.backload.hl7.encode import Coder
    from pipelines.backload.profiles import target_profile

    coder = Coder(target_profile("millennium-r4").codings)
    got = [segments.obxs(s, 1, 1, coder, "2.3.1")[0] for s in IRREGULAR]
    assert got[1] == ["OBX|1|ST|2345-7^Glucose^LN|1|||||||X"]
    assert got[5] == ["OBX|1|NM|2345-7^Glucose^LN|1|1e-07|g^^UCUM|0.5-|L|||F||||||702659008^^SCT"]
    assert got[4][2] == "OBX|2|ST|2345-7^Glucose^LN|1.2|||||||X|||20240304050607.1234+0100"
    rest = [0, 2, 3, 6, 7, 8]  # the same in both versions
    assert [got[i] for i in rest] == [EXPECTED["2.5.1"][i] for i in rest]


def _paths(x: object, pre: tuple = ()):
    yield pre
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, (*pre, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, (*pre, i))


def mutated() -> list:
    """Each builder on the golden resources with every member, in turn, replaced by a value of another
    JSON type: the message text and its findings, the refusal, or the class of the error raised."""
    import copy

    from pipelines.backload.hl7 import messages as m
    from pipelines.backload.hl7.encode import Coder
    from pipelines.backload.hl7.segments import Header
    from pipelines.backload.hl7.structure import check_segments
    from pipelines.backload.profiles import target_profile

    values = [7, 1.5, None, "", "s|^&", [], {}, True, ["a"], {"x": 1}]
    builders = {
        "Patient": "adt",
        "DiagnosticReport": "oru",
        "Immunization": "vxu",
        "DocumentReference": "mdm",
    }
    base, out = resources(), []
    for which, resource in enumerate(base):
        for path in _paths(resource):
            if not path or path[0] in ("resourceType", "id"):
                continue
            for value in values:
                res = copy.deepcopy(base)
                node = res[which]
                for k in path[:-1]:
                    node = node[k]
                node[path[-1]] = copy.deepcopy(value)
                by = {f"{r['resourceType']}/{r['id']}": r for r in res}

                def lookup(ref, by=by):
                    key = ref.get("reference") if isinstance(ref, dict) else ref
                    return by.get(key) if isinstance(key, str) else None

                for version in ("2.5.1", "2.3.1"):
                    coder = Coder(target_profile("millennium-r4").codings, "CERNER")
                    ctx = m.Context(Header(version=version), coder, lookup, None)
                    for r in res:
                        kind = builders.get(r.get("resourceType"))
                        if kind is None:
                            continue
                        try:
                            if kind == "adt":
                                b = m.adt(ctx, r, "CID", "2025", False)
                            else:
                                b = getattr(m, kind)(ctx, r, by["Patient/p1"], "CID", "2025")
                            got = [b.text, check_segments(b.segments, b.structure, version)]
                        except m.NotBuildable as exc:
                            got = ["refused", exc.reason, exc.detail]
                        except Exception as exc:  # the class is the outcome compared
                            got = ["error", type(exc).__name__]
                        out.append([which, [str(k) for k in path], repr(value), version, r.get("id"), got])
    return out


def test_the_compiled_builders_treat_odd_resource_shapes_as_the_source_does():
    """Compiled code checks annotations when called: a value of an unexpected type must still give what
    the source modules give (the same text, refusal, or error), never a new failure."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the source modules run, and there is no build to compare")
    native.build()
    script = "import json; from tests.test_backload_hl7_native import mutated; print(json.dumps(mutated()))"
    runs = {}
    for mode in ("1", "0"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, native.OFF: mode},
        )  # fmt: skip
        runs[mode] = json.loads(done.stdout)
    assert runs["1"] == runs["0"]
    outcomes = [row[-1][0] for row in runs["1"]]
    assert len(outcomes) > 20_000
    assert outcomes.count("error") > 1_000 and outcomes.count("refused") > 0
    assert sum(1 for o in outcomes if o.startswith("MSH|")) > 15_000


def _sources(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    for name in native.MODULES:
        (src / f"{name}.py").write_bytes((native.SOURCE / f"{name}.py").read_bytes())
    return src


def test_a_build_of_other_source_text_is_never_used(tmp_path, monkeypatch):
    monkeypatch.delenv(native.OFF, raising=False)
    src, store = _sources(tmp_path), tmp_path / "store"
    (store / native.digest(src)).mkdir(parents=True)
    path = ["source folder"]
    assert native.use(path, store, src) and path[0] == str(store / native.digest(src))
    # An edit to any of the modules (a comment is enough) leaves the build aside.
    for name in native.MODULES:
        edited = _sources(tmp_path / name)
        with (edited / f"{name}.py").open("a") as f:
            f.write("# edited\n")
        assert native.digest(edited) != native.digest(src)
        path = ["source folder"]
        assert not native.use(path, store, edited) and path == ["source folder"]
    monkeypatch.setenv(native.OFF, "0")
    path = ["source folder"]
    assert not native.use(path, store, src) and path == ["source folder"]


def test_no_build_where_the_sources_are_not_files(tmp_path):
    path = ["source folder"]
    assert native.built(tmp_path, tmp_path / "absent") is None
    assert not native.use(path, tmp_path, tmp_path / "absent") and path == ["source folder"]
