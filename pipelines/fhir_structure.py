"""A single-resource file read as R4 although its shape also fits an older release must be valid R4."""

from __future__ import annotations

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
        older = " or ".join(fhir_versions.NAMES[r] for r in sorted(found - fhir_versions.R4))
        return f"{obj['resourceType']} fits {older} and R4 by its shape but is not valid R4{where}"
    return None


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
