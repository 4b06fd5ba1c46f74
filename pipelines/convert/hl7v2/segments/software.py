"""SFT -> Device stand-ins and the message's Provenance, after the IG's SFT[Device] map and its message maps
(the first SFT is the originating software, entity role source; later ones handled the message)."""

from __future__ import annotations

from typing import Any

from pipelines.convert.hl7v2.datatypes import Ctx, dtm, first, text, val, where

PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
INSTALL_DATE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Device.version.installDate"


def device(ctx: Ctx, sft: Any) -> dict[str, str] | None:
    """SFT -> a Device stand-in for the software (vendor, version, product name, binary id)."""
    vendor = first(sft, 1)
    maker = vendor.get(1) if vendor is not None else None
    version, product, binary = val(sft, 2), val(sft, 3), val(sft, 4)
    if not (maker or version or product or binary):
        return None
    d: dict[str, Any] = {
        "resourceType": "Device",
        "id": ctx.rid("Device", f"software:{maker or ''}|{product or ''}|{version or ''}|{binary or ''}"),
    }
    if maker:
        d["manufacturer"] = maker
    if product:
        d["deviceName"] = [{"name": product, "type": "manufacturer-name"}]
    if binary:
        d["modelNumber"] = binary
    if version:
        v: dict[str, Any] = {"value": version}
        installed = dtm(ctx, val(sft, 6), where(sft, 6))
        if installed:
            v["extension"] = [{"url": INSTALL_DATE, "valueDateTime": installed}]
        d["version"] = [v]
    info = text(sft, 5)
    if info:
        d["note"] = [{"text": info}]
    ref = ctx.share(d)
    if product:
        ref["display"] = product
    return ref


def provenance(
    ctx: Ctx, devices: list[dict[str, str]], targets: list[dict[str, str]]
) -> dict[str, Any] | None:
    """The message's Provenance: what it produced (target), the software it passed through (entity)."""
    if not devices or not targets or not ctx.last_updated:
        return None
    p: dict[str, Any] = {"resourceType": "Provenance", "id": ctx.rid("Provenance", f"unit:{ctx.unit_key}")}
    meta = ctx.meta()
    if meta:
        p["meta"] = meta
    p["target"] = targets
    p["recorded"] = ctx.last_updated
    p["agent"] = [
        {
            "type": {"coding": [{"system": PROVENANCE_AGENT, "code": "assembler", "display": "Assembler"}]},
            "who": devices[0],
        }
    ]
    p["entity"] = [{"role": "source" if i == 0 else "derivation", "what": d} for i, d in enumerate(devices)]
    return p
