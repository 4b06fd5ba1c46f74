"""HL7 v2 messages -> FHIR R4 resources: one mapper per trigger-event group, registered in MAPPERS."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from pipelines.common.unit import Converted, Quarantine, Skip, stage_dict
from pipelines.convert.hl7v2 import vocab
from pipelines.convert.hl7v2.datatypes import Ctx, clean, first, instant, place, reps, val, where
from pipelines.convert.hl7v2.registry import NO_CLINICAL_CONTENT, carries_no_clinical_content
from pipelines.convert.hl7v2.segments import coverage as cov
from pipelines.convert.hl7v2.segments import encounter as enc_
from pipelines.convert.hl7v2.segments import participation as part
from pipelines.convert.hl7v2.segments import patient as pat
from pipelines.convert.hl7v2.segments import pharmacy, results, scheduling, software, timing
from pipelines.convert.hl7v2.segments.groups import Order, PatientGroup, gather


class Build:
    """One message's conversion: its context, its groups, what it emitted and which segments it used."""

    def __init__(self, msg: Any, source_system: str, unit_key: str, event: str, authoritative: bool) -> None:
        self.msg = msg
        self.msg_type = ((clean(msg.message_code) or "").strip().upper(), event)
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
        self.used.update(s.position for s in msg.segments if s.name in _ENVELOPE)
        # Collected segments and patient-level notes count as used only once a mapper takes them.
        for g in self.groups:
            self.used.difference_update(s.position for segs in g.other.values() for s in segs)
            self.used.difference_update(s.position for segs in g.notes_of.values() for s in segs)
            self.used.difference_update(s.position for s in g.ntes)
        self.software = [s for s in msg.segments if s.name == "SFT"]
        # Resources stay dicts until finish: later segments (ROL, PRT, TQ1) add to what was emitted.
        self.out: dict[tuple[str, str], tuple[dict[str, Any], bool]] = {}

    def take(self, segs: list[Any]) -> list[Any]:
        self.used.update(s.position for s in segs)
        return segs

    def emit(self, resource: dict[str, Any] | None, *, reference_only: bool = False) -> dict[str, str] | None:
        if resource is None:
            return None
        key = (resource["resourceType"], resource["id"])
        if key not in self.out or self.out[key][1]:
            self.out[key] = (resource, reference_only)
        elif key[0] == "RelatedPerson" and resource is not self.out[key][0]:
            self.out[key] = (cov.merge_person(self.out[key][0], resource), False)
        return {"reference": f"{key[0]}/{key[1]}"}

    def emitted(self, ref: dict[str, str] | None) -> dict[str, Any] | None:
        """The resource a reference returned by emit stands for (the first full one emitted)."""
        if not ref:
            return None
        rtype, _, rid = ref["reference"].partition("/")
        found = self.out.get((rtype, rid))
        return found[0] if found else None

    def roles(self, segs: list[Any]) -> list[tuple[Any, part.Role]]:
        """ROL/PRT segments as roles; a segment counts as used once it yields one."""
        out = []
        for seg in segs:
            r = part.role(self.ctx, seg)
            if r is not None:
                out.append((seg, r))
            elif part.withdrawn(seg):
                self.take([seg])  # a role the sender deletes is understood, and is no participant
        return out

    def patient_key(self, pid: Any) -> str:
        """PID-3's identifier; for results and immunizations without one, the PID's own demographics
        (a result is never worth losing for a missing MRN: identity linking decides who it is)."""
        if self.msg_type in DEMOGRAPHIC_IDENTITY and not any(c.code(1) for c in reps(pid, 3)):
            key = pat.demographic_key(pid, clean(self.msg.sending_facility))
            if key is None:
                raise Quarantine("hl7_missing_required", "PID-3 is empty and PID-5 or PID-7 too", "Patient")
            return key
        return pat.patient_key(pid)

    def subject(self, g: PatientGroup) -> tuple[dict[str, str], str]:
        """Emit the group's Patient (full in ADT, a stand-in elsewhere) with its related people, care
        team, coverage and guarantors; returns (reference, identity key)."""
        if g.pid is None:
            raise Quarantine("hl7_missing_required", "no PID segment", "Patient")
        key = self.patient_key(g.pid)
        resource = pat.patient(self.ctx, g.pid, g.pd1, g.nk1s, key)
        ref = {"reference": f"Patient/{resource['id']}"}
        team = []
        for seg, r in self.roles(g.patient_roles):
            self.take([seg])
            if r.code == "PP":
                # The IG: ROL's primary care provider is a PractitionerRole, PRT's the Practitioner.
                gp = r.practitioner if seg.name == "PRT" and r.practitioner else r.ref
                place(resource, "generalPractitioner", [*resource.get("generalPractitioner", []), gp], _PAT)
            else:
                team.append(r)
        subject = self.emit(resource, reference_only=not self.authoritative) or ref
        if team:
            self.emit(part.care_team(self.ctx, team, subject, key))
        for nk1 in g.nk1s:
            self.emit(cov.nk1_related_person(self.ctx, nk1, subject, key))
        self.finances(g, subject, key)
        return subject, key

    def finances(self, g: PatientGroup, subject: dict[str, str], patient_key: str) -> None:
        """IN1 (+IN2) -> Coverage; GT1 -> guarantors of the patient's Account, which lists the coverages."""
        in1s = self.take(g.other.get("IN1", []))
        in2s = g.other.get("IN2", [])
        coverages = []
        for i, in1 in enumerate(in1s):
            # An IN2 belongs to the IN1 before it.
            upto = in1s[i + 1].position if i + 1 < len(in1s) else None
            in2 = next(
                (s for s in in2s if s.position > in1.position and (upto is None or s.position < upto)), None
            )
            if in2 is not None:
                self.take([in2])
            c, subscriber = cov.coverage(self.ctx, in1, in2, subject, patient_key)
            self.emit(subscriber)
            coverages.append((c, self.emit(c)))
        guarantors = []
        for gt1 in g.other.get("GT1", []):
            found = cov.guarantor(self.ctx, gt1, subject, patient_key)
            if found is not None:
                self.take([gt1])
                guarantors.append(found[0])
                self.emit(found[1])
        if guarantors or coverages:
            key = cov.account_key(g.pid, patient_key)
            self.emit(cov.account(self.ctx, g.pid, key, subject, guarantors, coverages))

    def visit(self, g: PatientGroup, subject: dict[str, str], patient_key: str) -> dict[str, str] | None:
        """Emit the group's Encounter when PV1 says something about a visit (A28's "PV1||N" does not);
        ROL/PRT after PV1 become its participants (the IG's ROL[Encounter-PractitionerRole])."""
        pv1 = g.pv1
        if pv1 is None or not any(val(pv1, n) for n in (3, 7, 19, 44, 45)):
            return None
        key = enc_.encounter_key(pv1, patient_key, self.ctx.unit_key)
        e = enc_.encounter(self.ctx, pv1, g.pv2, subject, key, self.event if self.authoritative else None)
        added = []
        for seg, r in self.roles(g.visit_roles):
            self.take([seg])
            p: dict[str, Any] = {}
            if r.concept:
                p["type"] = [r.concept]
            if r.period:
                p["period"] = r.period
            p["individual"] = r.ref
            added.append(p)
        if added:
            place(e, "participant", e.get("participant", []) + added, _ENC)
        return self.emit(e, reference_only=not self.authoritative)

    def order_roles(
        self,
        o: Order,
        request: dict[str, Any] | None,
        report: dict[str, Any] | None = None,
        specimens: list[dict[str, Any]] = (),
    ) -> None:
        """ROL/PRT of an order: the ordering provider (OP) is the request's requester; in a result
        report, PRI the results interpreter, SC the specimens' collector, others performers."""
        for seg, r in self.roles(o.roles):
            if r.code == "OP" and request is not None:
                if "requester" not in request:
                    place(request, "requester", r.ref, _REQ)
            elif report is not None and r.code == "PRI":
                place(report, "resultsInterpreter", [*report.get("resultsInterpreter", []), r.ref], _DR)
            elif report is not None and r.code == "SC" and specimens:
                for sp in specimens:
                    collection = {"collector": r.ref, **sp.get("collection", {})}
                    place(sp, "collection", collection, _SPM)
            elif report is not None:
                place(report, "performer", [*report.get("performer", []), r.ref], _DR_PERF)
            elif request is not None and request["resourceType"] == "ServiceRequest":
                place(request, "performer", [*request.get("performer", []), r.ref], _REQ_PERF)
            elif request is not None and "performer" not in request:
                place(request, "performer", r.ref, _REQ_PERF)  # MedicationRequest.performer is 0..1
            else:
                continue
            self.take([seg])

    def encounter_details(self, g: PatientGroup, subject: dict, enc: dict | None, patient_key: str) -> None:
        parent = enc["reference"] if enc else f"Patient|{patient_key}"
        for dg1 in self.take(g.other.get("DG1", [])):
            self.emit(enc_.condition(self.ctx, dg1, subject, enc, parent))
        for pr1 in self.take(g.other.get("PR1", [])):
            proc = enc_.procedure(self.ctx, pr1, subject, enc, parent)
            for seg, r in self.roles(g.roles_of.get(pr1.position, [])) if proc else ():
                self.take([seg])
                perf: dict[str, Any] = {"function": r.concept} if r.concept else {}
                place(proc, "performer", [*proc.get("performer", []), {**perf, "actor": r.ref}], _PROC)
            self.emit(proc)
        for al1 in self.take(g.other.get("AL1", [])):
            self.emit(enc_.allergy(self.ctx, al1, subject, patient_key))

    def loose_results(self, g: PatientGroup, subject: dict, enc: dict | None, patient_key: str) -> None:
        # OBX outside any order (ADT vitals, VXU patient-level observations) are keyed under the visit.
        anchor = enc["reference"] if enc else f"Patient|{patient_key}"
        for r in g.results:
            key = results.observation_key(anchor, r.obx)
            self.emit(
                self.performers(r, results.observation(self.ctx, r.obx, key, subject, enc, None, r.ntes))
            )

    def performers(self, r: Any, obs: dict[str, Any]) -> dict[str, Any]:
        """PRT after an OBX naming a person or organization -> Observation.performer (the IG)."""
        for seg, role in self.roles(r.roles):
            self.take([seg])
            if role.ref not in obs.get("performer", []):
                place(obs, "performer", [*obs.get("performer", []), role.ref], _OBS)
        for seg in r.roles:
            device = part.device(self.ctx, seg) if seg.position not in self.used else None
            if device is not None and "device" not in obs:
                self.take([seg])
                place(obs, "device", device, _OBS_DEVICE)
        return obs

    def medication_order(self, o: Order, okey: str, subject: dict, enc: dict | None) -> None:
        """ORC with RXO/RXE -> a MedicationRequest with its timing and order roles."""
        mr = pharmacy.medication_request(self.ctx, o.orc, o.rx, o.rxrs, okey, subject, enc)
        if mr is not None:
            self.timing(o, mr)
            self.order_roles(o, mr)
        self.emit(mr)

    def timing(self, o: Order, request: dict[str, Any]) -> None:
        """The order's TQ1s -> the request's timing (the IG's TQ1[ServiceRequest]/[MedicationRequest]);
        without TQ1, the v2.3-style TQ of ORC-7, else OBR-27 or RXE-1."""
        legacy = None
        if not o.tq1s:
            for seg, n in (
                (o.orc, 7),
                (o.obr, 27),
                (o.rx if o.rx is not None and o.rx.name == "RXE" else None, 1),
            ):
                tq = first(seg, n) if seg is not None else None
                if tq is not None:
                    legacy = timing.tq_timing(self.ctx, tq, where(seg, n))
                    if legacy[0] or legacy[1]:
                        break
            if legacy is None or not (legacy[0] or legacy[1]):
                return
        self.take(o.tq1s)
        if request["resourceType"] == "ServiceRequest":
            timing.apply_to_service_request(self.ctx, request, o.tq1s, legacy)
        else:
            timing.apply_to_medication_request(self.ctx, request, o.tq1s, legacy)

    def functions(self, o: Order, event: dict[str, Any]) -> None:
        """An order's ROL/PRT on an Immunization or MedicationAdministration: performers with the role
        as their function (the IG's VXU map: OP and AP)."""
        for seg, r in self.roles(o.roles):
            self.take([seg])
            performers = event.get("performer", [])
            person = (r.practitioner or {}).get("reference")
            named = next((p for p in performers if person and p["actor"].get("reference") == person), None)
            if named is not None:
                # RXA-10's administering provider named again by a PRT: one performer, as its role.
                named["actor"] = r.ref
                if r.concept:
                    named["function"] = r.concept
                continue
            same = next(
                (p for p in performers if p["actor"].get("reference") == r.ref.get("reference")), None
            )
            if same is not None:
                if r.concept and "function" not in same:
                    same["function"] = r.concept
                continue
            entry: dict[str, Any] = {"function": r.concept} if r.concept else {}
            place(event, "performer", [*performers, {**entry, "actor": r.ref}], _EVENT)

    def finish(self, container: str) -> Converted:
        devices = [d for d in (software.device(self.ctx, s) for s in self.take(self.software)) if d]
        targets = [{"reference": f"{t}/{i}"} for (t, i), (_r, ref_only) in self.out.items() if not ref_only]
        self.emit(software.provenance(self.ctx, devices, targets))
        left = Counter(s.name for s in self.msg.segments if s.position not in self.used)
        for at, n in self.ctx.lost.items():
            left[at] += n
        resources = [stage_dict(r, reference_only=ref_only) for r, ref_only in self.out.values()]
        known = set(self.out)
        resources += [r for r in self.ctx.staged_shared() if (r.resource_type, r.id) not in known]
        return Converted(resources=resources, container=container, unconsumed=dict(left))


# Header segments, and a query response's acknowledgment and echo of the query: read, nothing to map.
_ENVELOPE = frozenset({"MSH", "EVN", "MSA", "QAK", "QPD"})

# Elements that precede the ones ROL/PRT add, in FHIR R4's element order.
_PAT = ("resourceType", "id", "meta", "extension", "identifier", "active", "name", "telecom", "gender")
_PAT += ("birthDate", "_birthDate", "deceasedBoolean", "deceasedDateTime", "address", "maritalStatus")
_PAT += ("multipleBirthBoolean", "multipleBirthInteger", "photo", "contact", "communication")
_ENC = ("resourceType", "id", "meta", "identifier", "status", "class", "type", "serviceType", "priority")
_ENC += ("subject", "episodeOfCare", "basedOn")
_REQ = ("resourceType", "id", "meta", "identifier", "basedOn", "status", "intent", "priority", "code")
_REQ += ("medicationCodeableConcept", "quantityQuantity", "subject", "encounter", "occurrenceTiming")
_REQ += ("asNeededBoolean", "authoredOn")
_REQ_PERF = (*_REQ, "requester", "performerType")
_DR_PERF = ("resourceType", "id", "meta", "identifier", "basedOn", "status", "category", "code", "subject")
_DR_PERF += ("encounter", "effectiveDateTime", "effectivePeriod", "issued")
_DR = (*_DR_PERF, "performer")
_SPM = ("resourceType", "id", "meta", "identifier", "accessionIdentifier", "status", "type", "subject")
_SPM += ("receivedTime", "parent", "request")
_PROC = ("resourceType", "id", "meta", "identifier", "basedOn", "partOf", "status", "statusReason")
_PROC += ("category", "code", "subject", "encounter", "performedDateTime", "performedPeriod", "recorder")
_PROC += ("asserter",)
_EVENT = ("resourceType", "id", "meta", "identifier", "instantiates", "partOf", "status", "statusReason")
_EVENT += ("vaccineCode", "medicationCodeableConcept", "patient", "subject", "encounter", "context")
_EVENT += ("supportingInformation", "occurrenceDateTime", "effectiveDateTime", "effectivePeriod", "recorded")
_EVENT += ("primarySource", "reportOrigin", "location", "manufacturer", "lotNumber", "expirationDate")
_EVENT += ("site", "route", "doseQuantity")
_OBS_DEVICE = ("resourceType", "id", "meta", "identifier", "basedOn", "partOf", "status", "category", "code")
_OBS_DEVICE += ("subject", "focus", "encounter", "effectiveDateTime", "effectivePeriod", "issued")
_OBS_DEVICE += ("performer", "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean")
_OBS_DEVICE += ("valueInteger", "valueRange", "valueRatio", "valueSampledData", "valueTime", "valueDateTime")
_OBS_DEVICE += ("valuePeriod", "dataAbsentReason", "interpretation", "note", "bodySite", "method", "specimen")
_CHARGE = ("resourceType", "id", "meta", "identifier", "definitionUri", "definitionCanonical", "status")
_CHARGE += ("partOf", "code", "subject", "context", "occurrenceDateTime", "occurrencePeriod")
_OBS = ("resourceType", "id", "meta", "identifier", "basedOn", "partOf", "status", "category", "code")
_OBS += ("subject", "focus", "encounter", "effectiveDateTime", "effectivePeriod", "issued")


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
            sr = results.service_request(b.ctx, o.orc, o.obr, okey, subject, enc)
            b.timing(o, sr)
            request = b.emit(sr, reference_only=True)
            specimens = [b.emit(results.specimen(b.ctx, s, okey, subject)) for s in o.specimens]
            obs = []
            for r in o.results:
                okey_obs = results.observation_key(okey, r.obx)
                ob = results.observation(b.ctx, r.obx, okey_obs, subject, enc, o.obr, r.ntes, request)
                obs.append(b.emit(b.performers(r, ob)))
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
            b.order_roles(o, b.emitted(request), report, [x for x in map(b.emitted, specimens) if x])
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
                b.medication_order(o, okey, subject, enc)
            else:
                sr = results.service_request(b.ctx, o.orc, o.obr, okey, subject, enc, o.ntes)
                b.timing(o, sr)
                b.order_roles(o, sr)
                ref = b.emit(sr)
                specimens = [b.emit(results.specimen(b.ctx, s, okey, subject)) for s in o.specimens]
                stored = b.emitted(ref)
                if specimens and stored is not None:
                    stored["specimen"] = specimens
            for r in o.results:
                # OBX in an order are the orderer's supporting observations (ask-at-order-entry answers).
                ob = results.observation(
                    b.ctx, r.obx, results.observation_key(okey, r.obx), subject, enc, o.obr, r.ntes
                )
                b.emit(b.performers(r, ob))
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
            b.medication_order(o, _order_key(b, o, i), subject, enc)
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
                ma = pharmacy.medication_administration(b.ctx, rxa, rxr, subject, enc, okey, request)
                if ma is not None:
                    b.functions(o, ma)
                b.emit(ma)


def _immunizations(b: Build) -> None:
    """VXU^V04: an Immunization per RXA (CVX-coded); OBX after an RXA are its observations."""
    for g in b.groups:
        subject, pkey = b.subject(g)
        enc = b.visit(g, subject, pkey)
        for i, o in enumerate(g.orders):
            okey = _order_key(b, o, i)
            for rxa in [x for x in (o.rx, *o.extra) if x is not None and x.name == "RXA"]:
                rxr = o.rxrs[0] if o.rxrs else None
                obxs = [r.obx for r in o.results]
                im = pharmacy.immunization(b.ctx, rxa, rxr, o.orc, subject, pkey, obxs)
                b.functions(o, im)
                ref = b.emit(im)
                for r in o.results:
                    obs = results.observation(
                        b.ctx, r.obx, results.observation_key(im["id"], r.obx), subject, enc, None, r.ntes
                    )
                    if ref:
                        obs["partOf"] = [ref]
                    b.emit(b.performers(r, obs))
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
            tq1 = next(iter(b.take(g.timing_of.get(sch.position, [])[:1])), None)
            key = scheduling.appointment_key(sch, b.ctx.unit_key)
            b.emit(scheduling.appointment(b.ctx, sch, key, b.event, subject, resources, notes, tq1))
        b.take(g.other.get("RGS", []))


def _charges(b: Build) -> None:
    """DFT^P03: a ChargeItem per FT1, with its diagnosis codes and performed procedure."""
    for g in b.groups:
        subject, pkey = b.subject(g)
        enc = b.visit(g, subject, pkey)
        for i, ft1 in enumerate(b.take(g.other.get("FT1", []))):
            charge, proc = scheduling.charge_item(b.ctx, ft1, subject, enc, f"{b.ctx.unit_key}|ft1:{i}")
            # ROL/PRT after an FT1 (v2.7+): performers of the charged service, the role as function.
            for seg, r in b.roles(g.roles_of.get(ft1.position, [])):
                b.take([seg])
                entry: dict[str, Any] = {"function": r.concept} if r.concept else {}
                place(charge, "performer", [*charge.get("performer", []), {**entry, "actor": r.ref}], _CHARGE)
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
    # The CDC IIS "Z32" immunization history: PID, then ORC/RXA/RXR/OBX groups, as in a VXU.
    ("RSP", "K11"): _immunizations,
    ("MDM", "T02"): _documents,
}
# Message types also listed as carrying no clinical content when this segment is absent.
CLINICAL_SEGMENT = {("RSP", "K11"): "RXA"}
# Messages whose Patient may be identified by PID's demographics when PID-3 is empty (ELR, IIS).
DEMOGRAPHIC_IDENTITY = {("ORU", "R01"), ("VXU", "V04"), ("RSP", "K11")}
# Only ADT states who a patient is and what a visit was; every other message refers to them.
AUTHORITATIVE = {"ADT"}


_TYPE_CODE = re.compile(r"[A-Z][A-Z0-9]{2}")


def convert_message(msg: Any, source_system: str, unit_key: str) -> Converted:
    """Convert one parsed HL7 v2 message; raises Quarantine for unmapped types or missing identity."""
    code = (clean(msg.message_code) or "").strip().upper()
    event = (clean(msg.trigger_event) or "").strip().upper()
    if not event:
        # v2.1/2.2 messages may carry the trigger in EVN-1 only.
        event = (val(msg.first("EVN"), 1) or "").upper()
    mapper = MAPPERS.get((code, event))
    if carries_no_clinical_content(code, event) and (
        mapper is None or msg.first(CLINICAL_SEGMENT[(code, event)]) is None
    ):
        raise Skip(NO_CLINICAL_CONTENT)
    if mapper is None:
        # Only a well-formed type is named: when fields shift, MSH-9 can hold another field's record value.
        label = f"{code}^{event}" if _TYPE_CODE.fullmatch(code) and _TYPE_CODE.fullmatch(event) else "MSH-9"
        raise Quarantine("hl7_unsupported_message_type", f"{label} is not mapped")
    b = Build(msg, source_system, unit_key, event, code in AUTHORITATIVE)
    if not any(g.pid is not None for g in b.groups) and code != "SIU":
        raise Quarantine("hl7_missing_required", "no PID segment", "Patient")
    mapper(b)
    return b.finish(f"{code}^{event}")
