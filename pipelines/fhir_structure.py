"""A single-resource file read as R4 although its shape also fits an older release must be valid R4."""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from typing import Any

from pipelines import fhir_versions
from pipelines.common.unit import Quarantine


@cache
def _model(rtype: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class  # the closest pydantic models to R4 (4.0.1)

    try:
        return get_fhir_model_class(rtype)
    except (KeyError, ValueError):  # a type R4 lacks: the type check, not this one, speaks
        return None


def ambiguity(obj: Any) -> str | None:
    """Why a resource whose shape fits R4 and DSTU2 or STU3 cannot be read as R4 (it is not valid R4 by
    the R4 structure; the first element that does not fit is named by path, never by value); None
    when it is valid R4, or when its shape alone already tells its release."""
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        return None
    found = fhir_versions.candidates(obj)
    if "4.0" not in found or found == fhir_versions.R4:
        return None
    older = " or ".join(fhir_versions.NAMES[r] for r in sorted(found - fhir_versions.R4))
    misfit = _schema_misfit(obj)
    if misfit is not _NO_SCHEMA:
        if misfit is None:
            return None
        return f"{obj['resourceType']} fits {older} and R4 by its shape but is not valid R4 at {misfit}"
    model = _model(obj["resourceType"])
    if model is None:
        return None
    try:
        model.model_validate(obj)
    except Exception as exc:  # pydantic's ValidationError, or a model's own value error
        errors = exc.errors() if callable(getattr(exc, "errors", None)) else [{}]
        # Shape, not completeness: an element R4 lacks or a value of the wrong type tells the releases
        # apart; a missing required element is as missing in any release, and R4's checks report it.
        misfits = [
            e for e in errors if e.get("type") != "missing" and _CHOICE_REQUIRED not in e.get("msg", "")
        ]
        if not misfits:
            return None
        loc = ".".join(str(p) for p in misfits[0].get("loc", ()) if isinstance(p, str))
        where = f" at {obj['resourceType']}.{loc}" if loc else ""
        return f"{obj['resourceType']} fits {older} and R4 by its shape but is not valid R4{where}"
    return None


_NO_SCHEMA = object()


def _schema_misfit(obj: dict) -> str | object | None:
    """The first element path where obj does not fit R4's compiled JSON Schema, None when it fits, or
    _NO_SCHEMA when the schema is not installed (then the R4B models decide, at a much higher cost).

    Shape, not completeness: a missing required element is as missing in any release."""
    import orjson

    from pipelines.quality.structure import schema_check

    check = schema_check(obj["resourceType"])
    if check is None:
        return _NO_SCHEMA
    text = orjson.dumps(obj, default=_json_number).decode()
    misfits = [f for f in check(text) or () if not f.endswith(": missing")]
    return misfits[0].rsplit(": ", 1)[0] if misfits else None


def _json_number(value: object) -> int | float:
    # The streaming readers give numbers as Decimal (exact): the schema check needs JSON numbers only.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


# fhir.resources' message for a required choice element (value[x]) that is absent.
_CHOICE_REQUIRED = "Expect any of field value from this list"


def check_ambiguous(obj: Any) -> None:
    """Under --fhir-release auto: quarantine a resource ambiguity() finds, asking for a declaration."""
    why = ambiguity(obj)
    if why is not None:
        raise Quarantine(
            "fhir_release_ambiguous",
            f"{why}; declare its release (--fhir-release dstu2, stu3 or r4, or a .fhir-release.csv line)",
            obj["resourceType"],
        )
