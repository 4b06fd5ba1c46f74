"""The resource types a FHIR source may name: R4's list plus the DSTU2/STU3 types ehrlift upgrades."""

from __future__ import annotations

from functools import cache

import orjson

from pipelines.common.paths import shipped


@cache
def known_resource_types() -> frozenset[str]:
    """Every type a unit may carry into conversion; any other resourceType is quarantined, never a table."""
    from pipelines.convert.fhir.upgrade.base import resource_types  # the upgrade maps import FHIR code

    r4 = orjson.loads((shipped("schemas") / "fhir_r4_resource_types.json").read_bytes())["types"]
    older = {t for types in resource_types()["only_in"].values() for t in types}
    return frozenset(r4) | frozenset(older)
