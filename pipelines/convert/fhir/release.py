"""Every unit checked against its file's FHIR release (declared or detected), not only the sampled head."""

from __future__ import annotations

from typing import Any

from pipelines import fhir_versions
from pipelines.common.unit import FileContext, Quarantine, UnreadableFile
from pipelines.common.warehouse import RESOURCE_TYPE


def check_release(obj: Any, release: str, declared: bool) -> None:
    """Quarantine a resource that cannot be in its file's release; a declared release says so by name.

    A resource without a valid resourceType is left to the preparer, which quarantines it as for R4.
    """
    rtype = obj.get("resourceType") if isinstance(obj, dict) else None
    if not isinstance(rtype, str) or not RESOURCE_TYPE.fullmatch(rtype):
        return
    why = fhir_versions.conflict(obj, release)
    if why is None:
        return
    if declared:
        raise Quarantine(
            "declared_release_contradicted",
            f"{why}; the file is declared {fhir_versions.NAMES[release]}",
            rtype,
        )
    raise Quarantine("fhir_version_mismatch", f"{why}; its file is {fhir_versions.NAMES[release]}", rtype)


def declared(ctx: FileContext) -> bool:
    return ctx.declared_release is not None


def check_bundle_release(bundle_type: str, fhir_version: Any, profiles: list[Any], ctx: FileContext) -> None:
    """A declared file whose Bundle itself names another release is quarantined whole, not entry by entry.

    bundle_type: the resourceType at the top (Bundle); fhir_version and profiles: its own fhirVersion
    and meta.profile, which say what the file is when its entries carry no marker of their own.
    """
    release = ctx.declared_release
    if release is None:
        return
    named = fhir_versions.explicit_release({"fhirVersion": fhir_version, "meta": {"profile": profiles}})
    if named is None or named == release:
        return
    what = fhir_versions.NAMES.get(named, "a release other than DSTU2, STU3 or R4")
    raise UnreadableFile(
        f"{bundle_type} names {what} in its fhirVersion or profile; "
        f"the file is declared {fhir_versions.NAMES[release]}",
        "declared_release_contradicted",
    )
