"""Unit tests for the ViewDefinition compiler: every FHIRPath feature it compiles, on tiny warehouses."""

from __future__ import annotations

import duckdb
import orjson
import pytest

from pipelines.views import CompiledView, ViewDefinitionError, compile_view
from pipelines.views.fhirpath import parse

ALICE = {
    "resourceType": "Patient",
    "id": "p1",
    "active": True,
    "gender": "female",
    "birthDate": "1984-03",
    "deceasedDateTime": "2021-07-01T10:00:00Z",
    "name": [
        {"use": "usual", "family": "Okafor", "given": ["Ada"]},
        {"use": "official", "family": "Okafor-Reyes", "given": ["Adaeze", "Grace"]},
    ],
    "identifier": [
        {"system": "urn:oid:1.2.3", "value": "A-1"},
        {"type": {"coding": [{"code": "MR"}]}, "system": "urn:mrn", "value": "MRN-001"},
    ],
    "telecom": [{"system": "phone", "value": "555-0100"}, {"system": "email", "value": "ada@example.org"}],
    "managingOrganization": {"reference": "Organization/org1"},
    "link": [{"other": {"reference": "https://fhir.example.org/r4/Patient/p9/_history/2"}}],
    "extension": [
        {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "F"},
        {
            "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "extension": [{"url": "ombCategory", "valueCoding": {"code": "2054-5"}}],
        },
    ],
}
BOB = {
    "resourceType": "Patient",
    "id": "p2",
    "active": False,
    "gender": "male",
    "birthDate": "1990-11-23",
    "deceasedBoolean": False,
    "name": [{"family": "O'Brien", "given": ["Bob"]}],
    "managingOrganization": {"reference": "Organization?identifier=urn:npi|123"},
}
CAROL = {"resourceType": "Patient", "id": "p3"}
GLUCOSE = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "subject": {"reference": "Patient/p1"},
    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
    "valueQuantity": {"value": 5.40, "unit": "mmol/L"},
    "effectiveDateTime": "2024-02-10",
    "component": [{"valueQuantity": {"value": 1}}, {"valueQuantity": {"value": 2}}],
}
SMOKER = {
    "resourceType": "Observation",
    "id": "o2",
    "status": "amended",
    "subject": {"reference": "Patient/p2"},
    "valueString": "never smoker",
    "effectiveInstant": "2024-02-11T08:30:00.000Z",
    "component": [{"valueTime": "08:30"}],
}
PATIENTS = (ALICE, BOB, CAROL)


def warehouse(*resources: dict) -> duckdb.DuckDBPyConnection:
    """An in-memory warehouse with fhir."<Type>" (id, resource JSON) tables holding `resources`."""
    con = duckdb.connect(":memory:")
    con.execute("CREATE SCHEMA fhir")
    kinds = {r["resourceType"] for r in resources} | {"Patient", "Observation", "Widget"}
    for kind in sorted(kinds):
        con.execute(f'CREATE TABLE fhir."{kind}" (id VARCHAR, resource JSON)')
        rows = [(r.get("id"), orjson.dumps(r).decode()) for r in resources if r["resourceType"] == kind]
        if rows:
            con.executemany(f'INSERT INTO fhir."{kind}" VALUES (?, ?)', rows)
    return con


def view(resource: str, *select: dict, where: list[str] | None = None, constants: list | None = None) -> dict:
    out: dict = {
        "resourceType": "ViewDefinition",
        "resource": resource,
        "status": "active",
        "select": list(select),
    }
    if where:
        out["where"] = [{"path": p} for p in where]
    if constants:
        out["constant"] = constants
    return out


def cols(*pairs: tuple, **node: object) -> dict:
    """A select node; each pair is (name, path) or (name, path, type) or (name, path, type, collection)."""
    columns = []
    for pair in pairs:
        column = {"name": pair[0], "path": pair[1]}
        if len(pair) > 2 and pair[2]:
            column["type"] = pair[2]
        if len(pair) > 3:
            column["collection"] = pair[3]
        columns.append(column)
    return {"column": columns, **node} if columns else dict(node)


def run(v: dict, *resources: dict) -> list[dict]:
    con = warehouse(*(resources or PATIENTS))
    compiled = compile_view(v)
    cursor = con.execute(compiled.sql)
    names = [d[0] for d in cursor.description]
    assert names == [c[0] for c in compiled.columns]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return sorted(rows, key=lambda r: orjson.dumps(r, default=str))


def single(path: str, type_: str | None = None, *resources: dict, collection: bool | None = None) -> list:
    """The values of one column `v` (ordered by id) for a path evaluated on each resource."""
    spec = ("v", path, type_) if collection is None else ("v", path, type_, collection)
    resource = (resources or PATIENTS)[0]["resourceType"]
    rows = run(view(resource, cols(("id", "getResourceKey()"), spec)), *(resources or PATIENTS))
    return [r["v"] for r in sorted(rows, key=lambda r: r["id"])]


# --- navigation ------------------------------------------------------------------------------------


def test_scalar_navigation_and_types():
    rows = run(
        view("Patient", cols(("id", "id", "id"), ("active", "active", "boolean"), ("born", "birthDate")))
    )
    assert rows == [
        {"id": "p1", "active": True, "born": "1984-03"},
        {"id": "p2", "active": False, "born": "1990-11-23"},
        {"id": "p3", "active": None, "born": None},
    ]


def test_arrays_flatten_implicitly_into_collections():
    assert single("name.given", "string", collection=True) == [["Ada", "Adaeze", "Grace"], ["Bob"], []]
    assert single("name.family.first()") == ["Okafor", "O'Brien", None]
    assert single("name[1].given[0]") == ["Adaeze", None, None]
    assert single("name.given[2]") == ["Grace", None, None]


def test_resource_type_prefix_and_this():
    assert single("Patient.gender") == ["female", "male", None]
    assert single("gender.where($this = 'male').exists()") == [False, True, False]


def test_non_collection_column_with_several_values_fails_at_query_time():
    with pytest.raises(duckdb.Error, match="collection: true"):
        single("name.family")


# --- functions -------------------------------------------------------------------------------------


def test_where_first_exists_empty_count():
    assert single("name.where(use = 'official').family") == ["Okafor-Reyes", None, None]
    assert single("name.exists()") == [True, True, False]
    assert single("name.given.empty()") == [False, False, True]
    assert single("identifier.exists(type.coding.code = 'MR')") == [True, False, False]
    assert single("name.given.count()", "integer") == [3, 1, 0]


def test_join():
    assert single("name.given.join(', ')") == ["Ada, Adaeze, Grace", "Bob", ""]
    assert single("name.given.join()") == ["AdaAdaezeGrace", "Bob", ""]


def test_union_keeps_order_and_first_prefers_left_side():
    assert single("(name.where(use = 'official') | name).first().family") == ["Okafor-Reyes", "O'Brien", None]
    assert single("(name.family | name.family)", "string", collection=True) == [
        ["Okafor", "Okafor-Reyes"],
        ["O'Brien"],
        [],
    ]


def test_of_type_on_choice_elements():
    assert single("deceased.ofType(boolean)", "boolean") == [None, False, None]
    assert single("deceased.ofType(dateTime)") == ["2021-07-01T10:00:00Z", None, None]
    assert single("value.ofType(Quantity).unit", None, GLUCOSE, SMOKER) == ["mmol/L", None]
    assert single("value.ofType(string)", None, GLUCOSE, SMOKER) == [None, "never smoker"]
    assert single("effective.ofType(instant)", "instant", GLUCOSE, SMOKER) == [
        None,
        "2024-02-11T08:30:00.000Z",
    ]
    assert single("effective.ofType(time)", "time", GLUCOSE, SMOKER) == [None, None]  # not an R4 choice


def test_extension_function():
    birth_sex = "extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex')"
    race = "extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race')"
    assert single(f"{birth_sex}.value.ofType(code).first()") == ["F", None, None]
    assert single(f"{race}.extension('ombCategory').value.ofType(Coding).code.first()") == [
        "2054-5",
        None,
        None,
    ]


def test_resource_and_reference_keys():
    assert single("getResourceKey()") == ["p1", "p2", "p3"]
    assert single("managingOrganization.getReferenceKey()") == ["org1", None, None]
    assert single("managingOrganization.getReferenceKey(Organization)") == ["org1", None, None]
    assert single("managingOrganization.getReferenceKey(Patient)") == [None, None, None]
    assert single("link.other.getReferenceKey(Patient).first()") == ["p9", None, None]


def test_boundaries():
    assert single("birthDate.lowBoundary()", "date") == ["1984-03-01", "1990-11-23", None]
    assert single("birthDate.highBoundary()", "date") == ["1984-03-31", "1990-11-23", None]
    assert single("value.ofType(Quantity).value.lowBoundary()", "decimal", GLUCOSE, SMOKER) == [5.35, None]
    assert single("value.ofType(Quantity).value.highBoundary()", "decimal", GLUCOSE, SMOKER) == [5.45, None]
    assert single("effective.ofType(dateTime).lowBoundary()", "dateTime", GLUCOSE, SMOKER) == [
        "2024-02-10T00:00:00.000+14:00",
        None,
    ]
    assert single("component.value.ofType(time).highBoundary()", "time", GLUCOSE, SMOKER) == [
        None,
        "08:30:59.999",
    ]


# --- operators -------------------------------------------------------------------------------------


def test_boolean_logic_three_valued():
    assert single("active and gender = 'female'") == [True, False, None]
    assert single("active or gender = 'male'") == [True, True, None]
    assert single("active.not()") == [False, True, None]
    assert single("active xor true") == [False, True, None]
    assert single("active implies gender = 'female'") == [True, True, None]


def test_comparisons_and_arithmetic():
    assert single("birthDate > '1985'") == [False, True, None]
    assert single("birthDate <= '1984-03'") == [True, False, None]
    assert single("gender != 'male'") == [True, False, None]
    assert single("name.family = 'O\\'Brien'") == [False, True, None]  # collection equality
    rows = run(
        view("Observation", cols(("id", "id"), ("x", "component.valueQuantity.value.first() * 4 + 2 - 1"))),
        GLUCOSE,
        SMOKER,
    )
    assert rows == [{"id": "o1", "x": 5.0}, {"id": "o2", "x": None}]
    assert single("1 + 2 * 3", "integer") == [7, 7, 7]
    assert single("7 / 2", "decimal") == [3.5, 3.5, 3.5]
    assert single("7 div 2", "integer") == [3, 3, 3]
    assert single("7 mod 2", "integer") == [1, 1, 1]
    assert single("'a' & {} & 'b'") == ["ab", "ab", "ab"]
    assert single("gender in ('male' | 'other')") == [False, True, None]


def test_constants_of_every_kind_are_bound_as_literals():
    constants = [
        {"name": "use", "valueCode": "official"},
        {"name": "second", "valueInteger": 1},
        {"name": "born", "valueDate": "1990-11-23"},
        {"name": "alive", "valueBoolean": False},
        {"name": "ratio", "valueDecimal": 2.5},
        {"name": "surname", "valueString": "O'Brien"},
    ]
    v = view(
        "Patient",
        cols(
            ("id", "id"),
            ("official", "name.where(use = %use).family"),
            ("second", "name[%second].given.first()"),
            ("same_birth", "birthDate = %born"),
            ("half", "%ratio / 2", "decimal"),
            ("irish", "name.family.first() = %surname"),
        ),
        where=["deceased.ofType(boolean) = %alive or active"],
        constants=constants,
    )
    assert run(v) == [
        {
            "id": "p1",
            "official": "Okafor-Reyes",
            "second": "Adaeze",
            "same_birth": False,
            "half": 1.25,
            "irish": False,
        },
        {"id": "p2", "official": None, "second": None, "same_birth": True, "half": 1.25, "irish": True},
    ]


# --- view structure --------------------------------------------------------------------------------


def test_for_each_for_each_or_null_and_row_index():
    v = view(
        "Patient",
        cols(("id", "id")),
        cols(("i", "%rowIndex", "integer"), ("system", "system"), forEachOrNull="telecom"),
    )
    assert run(v) == [
        {"id": "p1", "i": 0, "system": "phone"},
        {"id": "p1", "i": 1, "system": "email"},
        {"id": "p2", "i": 0, "system": None},
        {"id": "p3", "i": 0, "system": None},
    ]
    v["select"][1] = {"forEach": "name", "select": [cols(("given", "$this"), forEach="given")]}
    assert [(r["id"], r["given"]) for r in run(v)] == [
        ("p1", "Ada"),
        ("p1", "Adaeze"),
        ("p1", "Grace"),
        ("p2", "Bob"),
    ]


def test_union_all_and_nested_select_cross_product():
    v = view(
        "Patient",
        cols(
            ("id", "id"),
            select=[cols(("gender", "gender"))],
            unionAll=[
                cols(("kind", "'phone'"), ("value", "value"), forEach="telecom.where(system = 'phone')"),
                cols(("kind", "'mrn'"), ("value", "value"), forEach="identifier.where(type.exists())"),
            ],
        ),
        where=["id = 'p1'"],
    )
    assert run(v) == [
        {"id": "p1", "gender": "female", "kind": "mrn", "value": "MRN-001"},
        {"id": "p1", "gender": "female", "kind": "phone", "value": "555-0100"},
    ]


def test_repeat_walks_nested_items_in_pre_order():
    survey = {
        "resourceType": "QuestionnaireResponse",
        "id": "q1",
        "item": [
            {"linkId": "a", "item": [{"linkId": "a.1", "answer": [{"item": [{"linkId": "a.1.x"}]}]}]},
            {"linkId": "b"},
        ],
    }
    v = view(
        "QuestionnaireResponse",
        cols(("i", "%rowIndex", "integer"), ("link", "linkId"), repeat=["item", "answer.item"]),
    )
    assert sorted(run(v, survey), key=lambda r: r["i"]) == [
        {"i": 0, "link": "a"},
        {"i": 1, "link": "a.1"},
        {"i": 2, "link": "a.1.x"},
        {"i": 3, "link": "b"},
    ]


def test_view_level_where_filters_resources():
    v = view("Patient", cols(("id", "id")), where=["active", "name.exists()"])
    assert run(v) == [{"id": "p1"}]


def test_columns_report_duckdb_types():
    compiled = compile_view(
        view(
            "Observation",
            cols(
                ("id", "getResourceKey()", "id"),
                ("value", "value.ofType(Quantity).value", "decimal"),
                ("n", "component.count()", "integer"),
                ("final", "status = 'final'", "boolean"),
                ("codes", "code.coding.code", "code", True),
                ("code", "code", "CodeableConcept"),
            ),
        )
    )
    assert isinstance(compiled, CompiledView)
    assert compiled.columns == [
        ("id", "VARCHAR", False),
        ("value", "DOUBLE", False),
        ("n", "BIGINT", False),
        ("final", "BOOLEAN", False),
        ("codes", "VARCHAR[]", True),
        ("code", "JSON", False),
    ]


def test_resource_paths_are_parsed_once_per_row():
    sql = compile_view(
        view("Patient", cols(("g", "gender"), ("b", "birthDate"), ("n", "name.family.first()")))
    ).sql
    assert sql.count("_t.resource") == 2  # one multi-path json_extract_string and one json_extract
    assert "json_extract_string(_t.resource, ['$.gender', '$.birthDate'])" in sql


def test_custom_table_mapping():
    compiled = compile_view(
        view("Patient", cols(("id", "id"))), table_for=lambda kind: f"staging_{kind.lower()}"
    )
    assert "FROM staging_patient AS _t" in compiled.sql


def test_unknown_resource_types_use_dynamic_json_typing():
    widgets = (
        {"resourceType": "Widget", "id": "w1", "part": [{"size": 3, "on": True}, {"size": 5}]},
        {"resourceType": "Widget", "id": "w2", "part": {"size": 7, "on": False}},
        {"resourceType": "Widget", "id": "w3"},
    )
    assert single("part.size", "integer", *widgets, collection=True) == [[3, 5], [7], []]
    assert single("part.where(size > 4).size.first()", "integer", *widgets) == [5, 7, None]
    assert single("part.on.first()", "boolean", *widgets) == [True, False, None]
    with pytest.raises(duckdb.Error, match="non-boolean"):
        run(view("Widget", cols(("id", "id")), where=["part.size.first()"]), *widgets)


# --- invalid views ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({}, "resource"),
        ({"resource": "Patient"}, "select"),
        ({"resource": "Patient; DROP TABLE x", "select": [cols(("id", "id"))]}, "resource"),
        ({"resource": "Patient", "select": [cols(('x"; DROP TABLE y; --', "id"))]}, "column name"),
        ({"resource": "Patient", "select": [cols(("id", "id"), ("id", "gender"))]}, "unique"),
        ({"resource": "Patient", "select": [cols(("id", "@@"))]}, "FHIRPath"),
        ({"resource": "Patient", "select": [cols(("id", "`x'); DROP TABLE y; --`"))]}, "element name"),
        ({"resource": "Patient", "select": [cols(("id", "name.foo()"))]}, "unsupported FHIRPath function"),
        ({"resource": "Patient", "select": [cols(("id", "%nope"))]}, "undefined constant"),
        ({"resource": "Patient", "select": [{"forEach": 1}]}, "forEach"),
        ({"resource": "Patient", "select": [{"forEach": "name", "repeat": ["name"]}]}, "cannot be combined"),
        (
            {"resource": "Patient", "select": [cols(("id", "id"))], "where": [{"path": "name.family"}]},
            "boolean",
        ),
        ({"resource": "Patient", "select": [cols(("id", "id", "nonsense"))]}, "column type"),
        ({"resource": "Patient", "select": [cols(("id", "gender + 1"))]}, "cannot apply"),
        ({"resource": "Patient", "select": [cols(("id", "id"))], "constant": [{"name": "c"}]}, "value"),
        (
            {
                "resource": "Patient",
                "select": [cols(("id", "id"))],
                "constant": [{"name": "c", "valueInteger": "1"}],
            },
            "wrong JSON type",
        ),
        (
            {"resource": "Patient", "select": [{"unionAll": [cols(("a", "id")), cols(("b", "id"))]}]},
            "differ",
        ),
    ],
)
def test_invalid_views_raise_view_definition_error(bad: dict, message: str):
    with pytest.raises(ViewDefinitionError, match=message):
        compile_view(bad)


def test_string_values_cannot_escape_their_literal():
    hostile = "x') OR 1=1 --"
    v = view(
        "Patient",
        cols(("id", "id")),
        where=["gender = %g"],
        constants=[{"name": "g", "valueString": hostile}],
    )
    assert run(v) == []
    assert "'x'') OR 1=1 --'" in compile_view(v).sql
    assert run(view("Patient", cols(("id", "id")), where=["name.family = 'O\\'Brien'"])) == [{"id": "p2"}]


def test_parser_handles_precedence_and_escapes():
    assert parse("a or b and c") == parse("a or (b and c)")
    assert parse("1 + 2 * 3") == parse("1 + (2 * 3)")
    assert parse("'it\\'s \\u00e9'").value == "it's é"
    with pytest.raises(ViewDefinitionError):
        parse("name.where(")


def test_same_rows_without_fhir_metadata(monkeypatch: pytest.MonkeyPatch):
    # The compiler must stay correct when a type is unknown to the FHIR models (dynamic JSON typing);
    # only untyped columns differ, coming out as JSON because nothing says what they hold.
    v = view(
        "Patient",
        cols(
            ("id", "getResourceKey()"),
            ("family", "(name.where(use = 'official') | name).first().family", "string"),
            ("given", "name.given", "string", True),
            ("dead", "deceased.ofType(boolean)", "boolean"),
            ("org", "managingOrganization.getReferenceKey(Organization)"),
        ),
        cols(("phone", "value", "string"), forEachOrNull="telecom.where(system = 'phone')"),
        where=["gender.exists()"],
    )
    typed = run(v)
    monkeypatch.setattr("pipelines.views.schema.element", lambda type_name, key: None)
    dynamic = compile_view(v).sql
    assert "json_type(" in dynamic
    assert compile_view(view("Patient", cols(("g", "gender")))).columns == [("g", "JSON", False)]
    assert (
        run(v)
        == typed
        == [
            {
                "id": "p1",
                "family": "Okafor-Reyes",
                "given": ["Ada", "Adaeze", "Grace"],
                "dead": None,
                "org": "org1",
                "phone": "555-0100",
            },
            {"id": "p2", "family": "O'Brien", "given": ["Bob"], "dead": False, "org": None, "phone": None},
        ]
    )
