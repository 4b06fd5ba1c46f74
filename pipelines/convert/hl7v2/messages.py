"""HL7 v2 messages -> FHIR R4 resources: one mapper per trigger-event group, registered in MAPPERS."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from pipelines.common.unit import Converted, Quarantine, StagedResource, stage_dict
from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import Ctx, clean, instant, val
from pipelines.convert.hl7v2.segments import encounter as enc_
from pipelines.convert.hl7v2.segments import patient as pat
from pipelines.convert.hl7v2.segments import pharmacy, results, scheduling
from pipelines.convert.hl7v2.segments.groups import Order, PatientGroup, gather


class Build:
    """One message's conversion: its context, its groups, what it emitted and which segments it used."""

    def __init__(self, msg: Any, source_system: str, unit_key: str, event: str, authoritative: bool) -> None:
        self.msg = msg
        self.event = event
        self.authoritative = authoritative  # ADT: Patient and Encounter are stated, not referred to
        self.ctx = Ctx(source_system, unit_key)
        evn = msg.first("EVN")
        stamp = (val(evn, 2) if evn is not None and authoritative else None) or clean(msg.timestamp)
        self.ctx.last_updated = instant(
            self.ctx, stamp, "EVN-2" if evn is not None and val(evn, 2) else "MSH-7"
        )
        facility = clean(msg.sending_facility)
        if facility or clean(msg.control_id):
            source = vocab.local_system(source_system, f"msg:{facility or ''}")
            control = clean(msg.control_id)
            self.ctx.meta_source = f"{source}#{control}" if control else source
        self.groups, _leading, self.used = gather(msg.segments)
        self.used.update(s.position for s in msg.segments if s.name in ("MSH", "EVN"))
        # Collected segments and patient-level notes count as used only once a mapper takes them.
        for g in self.groups:
            self.used.difference_update(s.position for segs in g.other.values() for s in segs)
            self.used.difference_update(s.position for segs in g.notes_of.values() for s in segs)
            self.used.difference_update(s.position for s in g.ntes)
        self.out: dict[tuple[str, str], StagedResource] = {}

    def take(self, segs: list[Any]) -> list[Any]:
        self.used.update(s.position for s in segs)
        return segs

    def emit(self, resource: dict[str, Any] | None, *, reference_only: bool = False) -> dict[str, str] | None:
        if resource is None:
            return None
        key = (resource["resourceType"], resource["id"])
        if key not in self.out or self.out[key].reference_only:
            self.out[key] = stage_dict(resource, reference_only=reference_only)
        return {"reference": f"{key[0]}/{key[1]}"}

    def subject(self, g: PatientGroup) -> tuple[dict[str, str], str]:
        """Emit the group's Patient (full in ADT, a stand-in elsewhere); returns (reference, identity key)."""
        if g.pid is None:
            raise Quarantine("hl7_missing_required", "no PID segment", "Patient")
        key = pat.patient_key(g.pid)
        resource = pat.patient(self.ctx, g.pid, g.pd1, g.nk1s if self.authoritative else [])
        if not self.authoritative:
            self.used.difference_update(s.position for s in g.nk1s)
        return self.emit(resource, reference_only=not self.authoritative) or {}, key

    def visit(self, g: PatientGroup, subject: dict[str, str], patient_key: str) -> dict[str, str] | None:
        """Emit the group's Encounter when PV1 says something about a visit (A28's "PV1||N" does not)."""
        pv1 = g.pv1
        if pv1 is None or not any(val(pv1, n) for n in (3, 7, 19, 44, 45)):
            return None
        key = enc_.encounter_key(pv1, patient_key, self.ctx.unit_key)
        e = enc_.encounter(self.ctx, pv1, g.pv2, subject, key, self.event if self.authoritative else None)
        return self.emit(e, reference_only=not self.authoritative)

    def encounter_details(self, g: PatientGroup, subject: dict, enc: dict | None, patient_key: str) -> None:
        parent = enc["reference"] if enc else f"Patient|{patient_key}"
        for dg1 in self.take(g.other.get("DG1", [])):
            self.emit(enc_.condition(self.ctx, dg1, subject, enc, parent))
        for pr1 in self.take(g.other.get("PR1", [])):
            self.emit(enc_.procedure(self.ctx, pr1, subject, enc, parent))
        for al1 in self.take(g.other.get("AL1", [])):
            self.emit(enc_.allergy(self.ctx, al1, subject, patient_key))

    def loose_results(self, g: PatientGroup, subject: dict, enc: dict | None, patient_key: str) -> None:
        # OBX outside any order (ADT vitals, VXU patient-level observations) are keyed under the visit.
        anchor = enc["reference"] if enc else f"Patient|{patient_key}"
        for r in g.results:
            key = results.observation_key(anchor, r.obx)
            self.emit(results.observation(self.ctx, r.obx, key, subject, enc, None, r.ntes))

    def finish(self, container: str) -> Converted:
        left = Counter(s.name for s in self.msg.segments if s.position not in self.used)
        for at, n in self.ctx.lost.items():
            left[at] += n
        resources = list(self.out.values())
        known = set(self.out)
        resources += [r for r in self.ctx.staged_shared() if (r.resource_type, r.id) not in known]
        return Converted(resources=resources, container=container, unconsumed=dict(left))


# --- mappers by message type --------------------------------------------------------------------------


def _adt(b: Build) -> None:
    for g in b.groups:
        subject, key = b.subject(g)
        enc = b.visit(g, subject, key)
        b.encounter_details(g, subject, enc, key)
        b.loose_results(g, subject, enc, key)


def _adt_merge(b: Build) -> None:
    """A40: each PID/MRG pair merges the MRG's prior patient into the PID's surviving one."""
    for g in b.groups:
        if g.pid is None:
            continue
        key = pat.patient_key(g.pid)
        survivor = pat.patient(b.ctx, g.pid, g.pd1, g.nk1s)
        retired = pat.merge_links(b.ctx, survivor, g.mrg) if g.mrg is not None else None
        if g.mrg is not None and retired is None:
            raise Quarantine("hl7_missing_required", "MRG-1 is empty", "Patient")
        subject = b.emit(survivor) or {}
        b.emit(retired)
        b.visit(g, subject, key)


def _order_key(b: Build, o: Order, i: int) -> str:
    return results.order_key(b.ctx, o.orc, o.obr, f"order:{i}")


def _results(b: Build) -> None:
    """ORU^R01: per OBR, a DiagnosticReport with its Observations and Specimens, and the order it answers."""
    for g in b.groups:
        subject, pkey = b.subject(g)
        enc = b.visit(g, subject, pkey)
        for i, o in enumerate(g.orders):
            if o.obr is None:
                b.used.difference_update(s.position for s in (o.orc, *o.ntes) if s is not None)
                continue
            okey = _order_key(b, o, i)
            request = b.emit(
                results.service_request(b.ctx, o.orc, o.obr, okey, subject, enc), reference_only=True
            )
            specimens = [b.emit(results.specimen(b.ctx, s, okey, subject)) for s in o.specimens]
            obs = []
            for r in o.results:
                okey_obs = results.observation_key(okey, r.obx)
                obs.append(
                    b.emit(results.observation(b.ctx, r.obx, okey_obs, subject, enc, o.obr, r.ntes, request))
                )
            report = results.diagnostic_report(
                b.ctx,
                o.orc,
                o.obr,
                okey,
                subject,
                enc,
                [x for x in obs if x],
                [x for x in specimens if x],
                request,
            )
            note_text = results.notes(b.ctx, o.ntes)
            if note_text:
                # R4 DiagnosticReport has no note: the order's comments become its conclusion.
                report["conclusion"] = "\n".join(n["text"] for n in note_text)
            b.emit(report)
        b.loose_results(g, subject, enc, pkey)
        b.encounter_details(g, subject, enc, pkey)


def _orders(b: Build) -> None:
    """ORM^O01 / OML^O21: a ServiceRequest per ORC/OBR order, with DG1 diagnoses and order notes."""
    for g in b.groups:
        subject, pkey = b.subject(g)
        enc = b.visit(g, subject, pkey)
        for i, o in enumerate(g.orders):
            okey = _order_key(b, o, i)
            if o.rx is not None and o.rx.name == "RXO":
                b.emit(pharmacy.medication_request(b.ctx, o.orc, o.rx, o.rxrs, okey, subject, enc))
            else:
                sr = results.service_request(b.ctx, o.orc, o.obr, okey, subject, enc, o.ntes)
                ref = b.emit(sr)
                specimens = [b.emit(results.specimen(b.ctx, s, okey, subject)) for s in o.specimens]
                if specimens and ref:
                    b.out[("ServiceRequest", sr["id"])] = stage_dict({**sr, "specimen": specimens})
            for r in o.results:
                # OBX in an order are the orderer's supporting observations (ask-at-order-entry answers).
                b.emit(
                    results.observation(
                        b.ctx, r.obx, results.observation_key(okey, r.obx), subject, enc, o.obr, r.ntes
                    )
                )
        b.encounter_details(g, subject, enc, pkey)


def _pharmacy_orders(b: Build) -> None:
    """RDE^O11: a MedicationRequest per ORC/RXE order."""
    for g in b.groups:
        subject, pkey = b.subject(g)
        enc = b.visit(g, subject, pkey)
        for i, o in enumerate(g.orders):
            if o.rx is None:
                b.used.difference_update(s.position for s in (o.orc, o.obr) if s is not None)
                continue
            b.emit(pharmacy.medication_request(b.ctx, o.orc, o.rx, o.rxrs, _order_key(b, o, i), subject, enc))
        b.encounter_details(g, subject, enc, pkey)


def _administrations(b: Build) -> None:
    """RAS^O17: a MedicationAdministration per RXA, referring to its order."""
    for g in b.groups:
        subject, pkey = b.subject(g)
        enc = b.visit(g, subject, pkey)
        for i, o in enumerate(g.orders):
            okey = _order_key(b, o, i)
            request = (
                {"reference": f"MedicationRequest/{b.ctx.rid('MedicationRequest', okey)}"} if o.orc else None
            )
            for rxa in [x for x in (o.rx, *o.extra) if x is not None and x.name == "RXA"]:
                rxr = o.rxrs[0] if o.rxrs else None
                b.emit(pharmacy.medication_administration(b.ctx, rxa, rxr, subject, enc, okey, request))


def _immunizations(b: Build) -> None:
    """VXU^V04: an Immunization per RXA (CVX-coded); OBX after an RXA are its observations."""
    for g in b.groups:
        subject, pkey = b.subject(g)
        enc = b.visit(g, subject, pkey)
        for i, o in enumerate(g.orders):
            okey = _order_key(b, o, i)
            for rxa in [x for x in (o.rx, *o.extra) if x is not None and x.name == "RXA"]:
                rxr = o.rxrs[0] if o.rxrs else None
                im = pharmacy.immunization(b.ctx, rxa, rxr, o.orc, subject, pkey)
                ref = b.emit(im)
                for r in o.results:
                    obs = results.observation(
                        b.ctx, r.obx, results.observation_key(im["id"], r.obx), subject, enc, None, r.ntes
                    )
                    if ref:
                        obs["partOf"] = [ref]
                    b.emit(obs)
            if o.rx is None:
                b.used.difference_update(s.position for s in (o.orc,) if s is not None)
            del okey
        b.loose_results(g, subject, enc, pkey)


def _schedule(b: Build) -> None:
    """SIU^S12-S15: the SCH and its resource groups -> Appointment, status by trigger event."""
    for g in b.groups:
        subject = pkey = None
        if g.pid is not None:
            subject, pkey = b.subject(g)
            b.visit(g, subject, pkey)
        for sch in b.take(g.other.get("SCH", [])):
            resources = [(n, s) for n in ("AIS", "AIG", "AIL", "AIP") for s in b.take(g.other.get(n, []))]
            resources.sort(key=lambda item: item[1].position)
            notes = b.take(g.notes_of.get(sch.position, []))
            key = scheduling.appointment_key(sch, b.ctx.unit_key)
            b.emit(scheduling.appointment(b.ctx, sch, key, b.event, subject, resources, notes))
        b.take(g.other.get("RGS", []))


def _charges(b: Build) -> None:
    """DFT^P03: a ChargeItem per FT1, with its diagnosis codes and performed procedure."""
    for g in b.groups:
        subject, pkey = b.subject(g)
        enc = b.visit(g, subject, pkey)
        for i, ft1 in enumerate(b.take(g.other.get("FT1", []))):
            charge, proc = scheduling.charge_item(b.ctx, ft1, subject, enc, f"{b.ctx.unit_key}|ft1:{i}")
            b.emit(proc)
            b.emit(charge)
        b.encounter_details(g, subject, enc, pkey)


def _documents(b: Build) -> None:
    """MDM^T02: TXA with its OBX content -> DocumentReference."""
    for g in b.groups:
        subject, pkey = b.subject(g)
        enc = b.visit(g, subject, pkey)
        obxs = [r.obx for r in g.results] + [r.obx for o in g.orders for r in o.results]
        for txa in b.take(g.other.get("TXA", [])):
            b.emit(scheduling.document_reference(b.ctx, txa, obxs, subject, enc, b.ctx.unit_key))


ADT_EVENTS = ("A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A28", "A31")

# The one registry: (message code, trigger event) -> mapper.
MAPPERS: dict[tuple[str, str], Callable[[Build], None]] = {
    **{("ADT", e): _adt for e in ADT_EVENTS},
    ("ADT", "A40"): _adt_merge,
    ("ORU", "R01"): _results,
    ("ORM", "O01"): _orders,
    ("OML", "O21"): _orders,
    **{("SIU", e): _schedule for e in ("S12", "S13", "S14", "S15")},
    ("DFT", "P03"): _charges,
    ("RDE", "O11"): _pharmacy_orders,
    ("RAS", "O17"): _administrations,
    ("VXU", "V04"): _immunizations,
    ("MDM", "T02"): _documents,
}
# Only ADT states who a patient is and what a visit was; every other message refers to them.
AUTHORITATIVE = {"ADT"}


def convert_message(msg: Any, source_system: str, unit_key: str) -> Converted:
    """Convert one parsed HL7 v2 message; raises Quarantine for unmapped types or missing identity."""
    code = (clean(msg.message_code) or "").strip().upper()
    event = (clean(msg.trigger_event) or "").strip().upper()
    if not event:
        # v2.1/2.2 messages may carry the trigger in EVN-1 only.
        event = (val(msg.first("EVN"), 1) or "").upper()
    mapper = MAPPERS.get((code, event))
    if mapper is None:
        raise Quarantine("hl7_unsupported_message_type", f"{code or '?'}^{event or '?'} is not mapped")
    b = Build(msg, source_system, unit_key, event, code in AUTHORITATIVE)
    if not any(g.pid is not None for g in b.groups) and code != "SIU":
        raise Quarantine("hl7_missing_required", "no PID segment", "Patient")
    mapper(b)
    return b.finish(f"{code}^{event}")
