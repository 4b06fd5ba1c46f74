"""The demo patients as C-CDA R2.1 documents: a CCD each, a Discharge Summary after an inpatient stay."""
# ruff: noqa: E501 - XML templates read best one element run per line

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from pipelines.demo.hl7v2_segments import dtm
from pipelines.demo.records import CODES, PatientRecord, export_time
from pipelines.demo.summary import FileSummary

CCDA_DIR = "sources/ccda"
OWNED = r"\d+-(ccd|discharge)\.xml"
ROOT = "2.16.840.1.113883.3.7207"  # the demo's invented assigning authority (an example-style OID)
LOINC, SNOMED, RXNORM, NDC, CVX, ICD10 = (
    "2.16.840.1.113883.6.1",
    "2.16.840.1.113883.6.96",
    "2.16.840.1.113883.6.88",
    "2.16.840.1.113883.6.69",
    "2.16.840.1.113883.12.292",
    "2.16.840.1.113883.6.90",
)
T = "2.16.840.1.113883.10.20.22."
_SYSTEMS = {"rxnorm": RXNORM, "snomed": SNOMED}
_PROBLEM_STATUS = {
    "active": "55561003",
    "inactive": "73425007",
    "resolved": "413322009",
    "remission": "277022003",
}
_MED_STATUS = {"active": "active", "completed": "completed", "stopped": "aborted", "on-hold": "suspended"}
_SEVERITY = {"mild": "255604002", "moderate": "6736007", "severe": "24484000"}
_CRITICALITY = {"low": "CRITL", "high": "CRITH", "unable-to-assess": "CRITU"}
_GENDER = {"male": "M", "female": "F"}
_CD = ' xsi:type="CD"'


def _a(v: str) -> str:
    return quoteattr(v)


def _code(tag: str, code: str, system: str, display: str | None, extra: str = "", inner: str = "") -> str:
    disp = f" displayName={_a(display)}" if display else ""
    return f"<{tag} code={_a(code)} codeSystem={_a(system)}{disp}{extra}>{inner}</{tag}>"


def _id(ext: str, root: str | None = None) -> str:
    return f'<id root="{root or ROOT}" extension={_a(ext)}/>'


def _tpl(*roots: str) -> str:
    return "".join(f'<templateId root="{r}" extension="2015-08-01"/>' for r in roots)


class _Doc:
    """One document being written, and the resources (by type and id key) it yields."""

    def __init__(self, patient: PatientRecord) -> None:
        self.p = patient
        self.keys: set[tuple[str, str]] = set()

    def ts(self, t: int) -> str:
        return dtm(t, self.p.utc_offset_minutes)

    def add(self, rtype: str, key: str) -> None:
        self.keys.add((rtype, key))


def _header(
    d: _Doc, doc_template: str, code: str, title: str, doc_id: str, when: int, body: str, enc: str
) -> str:
    p = d.p
    given = "".join(f"<given>{escape(g)}</given>" for g in p.given)
    addr = "".join(f"<streetAddressLine>{escape(x)}</streetAddressLine>" for x in p.address.line)
    gender = _GENDER.get(p.gender, "UN")
    d.add("Patient", f"{p.mrn_root or ROOT}|{p.mrn}")
    d.add("DocumentReference", f"{ROOT}|{doc_id}")
    d.add("Composition", f"{ROOT}|{doc_id}")
    d.add("Practitioner", f"{ROOT}|author-1")
    d.add("Organization", f"{ROOT}|org-1")
    d.add("PractitionerRole", f"{ROOT}|author-1|org-1")  # the author acting for the hospital
    d.add("Provenance", f"{ROOT}|{doc_id}")  # the document's authorship (a zoned author time)
    org = (
        f'{_id("org-1")}<name>Demo General Hospital</name><telecom use="WP" value="tel:+1-555-555-0100"/>'
        "<addr><streetAddressLine>1 Hospital Way</streetAddressLine><city>Springfield</city>"
        "<state>IL</state><postalCode>62701</postalCode><country>US</country></addr>"
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:sdtc="urn:hl7-org:sdtc">'
        '<realmCode code="US"/><typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>'
        f"{_tpl(T + '1.1', doc_template)}{_id(doc_id)}"
        f"{_code('code', code, LOINC, title)}<title>{escape(title)}</title>"
        f'<effectiveTime value="{d.ts(when)}"/>'
        '<confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/><languageCode code="en-US"/>'
        f"<recordTarget><patientRole>{_id(p.mrn, p.mrn_root)}"
        f'<addr use="H">{addr}<city>{escape(p.address.city)}</city><state>{escape(p.address.state)}</state>'
        f"<postalCode>{escape(p.address.postal_code)}</postalCode><country>{p.address.country}</country></addr>"
        f'<telecom use="HP" value={_a("tel:" + p.phone)}/>'
        f'<patient><name use="L">{given}<family>{escape(p.family)}</family></name>'
        f'<administrativeGenderCode code="{gender}" codeSystem="2.16.840.1.113883.5.1"/>'
        f'<birthTime value="{p.birth_date.strftime("%Y%m%d")}"/>'
        f"<languageCommunication><languageCode code={_a(p.language['code'])}/>"
        '<preferenceInd value="true"/></languageCommunication></patient></patientRole></recordTarget>'
        f'<author><time value="{d.ts(when)}"/><assignedAuthor>{_id("author-1")}'
        "<assignedPerson><name><given>Dana</given><family>Demo</family><suffix>MD</suffix></name></assignedPerson>"
        f"<representedOrganization>{org}</representedOrganization></assignedAuthor></author>"
        "<custodian><assignedCustodian><representedCustodianOrganization>"
        f"{org}</representedCustodianOrganization></assignedCustodian></custodian>"
        f"{enc}<component><structuredBody>{body}</structuredBody></component></ClinicalDocument>\n"
    )


def _section(template: str, code: str, title: str, entries: list[str]) -> str:
    body = "".join(f"<entry>{e}</entry>" for e in entries)
    return (
        f"<component><section>{_tpl(template, template + '.1')}{_code('code', code, LOINC, title)}"
        f"<title>{escape(title)}</title><text>{escape(title)}</text>{body}</section></component>"
    )


def _problems(d: _Doc, conditions) -> str:
    entries = []
    for c in conditions:
        d.add("Condition", f"{ROOT}|{c.uid}")
        code = c.code
        if c.coding == "icd10":
            value = _code("value", code["icd10"], ICD10, code["icd10_display"], _CD)
        else:
            tr = (
                _code("translation", code["icd10"], ICD10, code["icd10_display"])
                if c.coding == "both"
                else ""
            )
            value = _code("value", code["snomed"], SNOMED, code["display"], _CD, tr)
        high = f'<high value="{d.ts(c.abatement)}"/>' if c.abatement else ""
        status = _PROBLEM_STATUS.get(c.clinical_status)
        status_obs = (
            f'<entryRelationship typeCode="REFR"><observation classCode="OBS" moodCode="EVN">'
            f'{_tpl(T + "4.6")}<code code="33999-4" codeSystem="{LOINC}"/><statusCode code="completed"/>'
            f"{_code('value', status, SNOMED, None, _CD)}</observation></entryRelationship>"
            if status
            else ""
        )
        neg = ' negationInd="true"' if c.verification_status == "refuted" else ""
        entries.append(
            f'<act classCode="ACT" moodCode="EVN">{_tpl(T + "4.3")}{_id(c.uid + ":concern")}'
            f'<code code="CONC" codeSystem="2.16.840.1.113883.5.6"/><statusCode code="active"/>'
            f'<effectiveTime><low value="{d.ts(c.recorded)}"/></effectiveTime>'
            f'<entryRelationship typeCode="SUBJ"><observation classCode="OBS" moodCode="EVN"{neg}>'
            f'{_tpl(T + "4.4")}{_id(c.uid)}<code code="55607006" codeSystem="{SNOMED}" displayName="Problem"/>'
            f'<statusCode code="completed"/><effectiveTime><low value="{d.ts(c.onset)}"/>{high}</effectiveTime>'
            f"{value}{status_obs}</observation></entryRelationship></act>"
        )
    return _section(T + "2.5", "11450-4", "Problems", entries)


def _allergies(d: _Doc) -> str:
    entries = []
    for a in d.p.allergies:
        d.add("AllergyIntolerance", f"{ROOT}|{a.uid}")
        s = a.substance
        system = _SYSTEMS.get(s["system"], SNOMED)
        kind = {"medication": "416098002", "food": "414285001"}.get(s.get("category", ""), "419199007")
        reaction = a.reaction
        entries.append(
            f'<act classCode="ACT" moodCode="EVN">{_tpl(T + "4.30")}{_id(a.uid + ":concern")}'
            f'<code code="CONC" codeSystem="2.16.840.1.113883.5.6"/><statusCode code="active"/>'
            f'<effectiveTime><low value="{d.ts(a.recorded)}"/></effectiveTime>'
            f'<entryRelationship typeCode="SUBJ"><observation classCode="OBS" moodCode="EVN">'
            f'{_tpl(T + "4.7")}{_id(a.uid)}<code code="ASSERTION" codeSystem="2.16.840.1.113883.5.4"/>'
            f'<statusCode code="completed"/><effectiveTime><low value="{d.ts(a.recorded)}"/></effectiveTime>'
            f"{_code('value', kind, SNOMED, None, _CD)}"
            f'<participant typeCode="CSM"><participantRole classCode="MANU"><playingEntity classCode="MMAT">'
            f"{_code('code', s['code'], system, s['display'])}</playingEntity></participantRole></participant>"
            f'<entryRelationship typeCode="SUBJ" inversionInd="true"><observation classCode="OBS" moodCode="EVN">'
            f'{_tpl(T + "4.145")}<code code="82606-5" codeSystem="{LOINC}"/><statusCode code="completed"/>'
            f'<value xsi:type="CD" code="{_CRITICALITY[a.criticality]}" codeSystem="2.16.840.1.113883.5.1063"/>'
            f"</observation></entryRelationship>"
            f'<entryRelationship typeCode="MFST" inversionInd="true"><observation classCode="OBS" moodCode="EVN">'
            f'{_tpl(T + "4.9")}{_id(a.uid + ":reaction")}<code code="ASSERTION" codeSystem="2.16.840.1.113883.5.4"/>'
            f'<statusCode code="completed"/>'
            f"{_code('value', reaction['code'], SNOMED, reaction['display'], _CD)}"
            f'<entryRelationship typeCode="SUBJ" inversionInd="true"><observation classCode="OBS" moodCode="EVN">'
            f'{_tpl(T + "4.8")}<code code="SEV" codeSystem="2.16.840.1.113883.5.4"/><statusCode code="completed"/>'
            f"{_code('value', _SEVERITY[a.severity], SNOMED, a.severity, _CD)}"
            "</observation></entryRelationship></observation></entryRelationship>"
            "</observation></entryRelationship></act>"
        )
    return _section(T + "2.6", "48765-2", "Allergies", entries)


def _medications(d: _Doc, meds) -> str:
    entries = []
    for m in meds:
        d.add("MedicationStatement", f"{ROOT}|{m.uid}")
        drug = m.drug
        if m.coding == "ndc" or "rxnorm" not in drug:
            code = _code("code", drug["ndc"], NDC, drug.get("ndc_display"))
        else:
            tr = _code("translation", drug["ndc"], NDC, drug.get("ndc_display")) if m.coding == "both" else ""
            code = _code("code", drug["rxnorm"], RXNORM, drug["display"], "", tr)
        route = CODES["routes"][drug["route"]]
        hours = 24 // max(int(drug.get("frequency", 1)), 1)
        entries.append(
            f'<substanceAdministration classCode="SBADM" moodCode="EVN">{_tpl(T + "4.16")}{_id(m.uid)}'
            f'<text>{escape(drug["text"])}</text><statusCode code="{_MED_STATUS.get(m.status, "active")}"/>'
            f'<effectiveTime xsi:type="IVL_TS"><low value="{d.ts(m.authored)}"/></effectiveTime>'
            f'<effectiveTime xsi:type="PIVL_TS" institutionSpecified="true" operator="A">'
            f'<period value="{hours}" unit="h"/></effectiveTime>'
            f'{_code("routeCode", route["code"], SNOMED, route["display"])}<doseQuantity value="1"/>'
            f'<consumable><manufacturedProduct classCode="MANU">{_tpl(T + "4.23")}'
            f"<manufacturedMaterial>{code}</manufacturedMaterial></manufacturedProduct></consumable>"
            "</substanceAdministration>"
        )
    return _section(T + "2.1", "10160-0", "Medications", entries)


def _num(v: float, decimals: int) -> str:
    return f"{v:.{decimals}f}"


def _results(d: _Doc, encounters) -> str:
    entries = []
    for e in encounters:
        for panel in e.panels:
            d.add("DiagnosticReport", f"{ROOT}|{panel.uid}")
            comps = []
            for r in panel.results:
                d.add("Observation", f"{ROOT}|{r.uid}")
                test = CODES["lab_tests"][r.test]
                if r.coding == "local":
                    code = f'<code code={_a(r.test)} codeSystem="{ROOT}.99" displayName={_a(test["local_display"])}/>'
                else:
                    code = _code("code", test["loinc"], LOINC, test["display"])
                dec = int(test.get("decimals", 0))
                comps.append(
                    f'<component><observation classCode="OBS" moodCode="EVN">{_tpl(T + "4.2")}{_id(r.uid)}{code}'
                    f'<statusCode code="completed"/><effectiveTime value="{d.ts(panel.collected)}"/>'
                    f'<value xsi:type="PQ" value="{_num(r.value, dec)}" unit={_a(test["unit"])}/>'
                    f'<interpretationCode code="{r.interpretation}" codeSystem="2.16.840.1.113883.5.83"/>'
                    f'<referenceRange><observationRange><value xsi:type="IVL_PQ">'
                    f'<low value="{test["low"]}" unit={_a(test["unit"])}/><high value="{test["high"]}" '
                    f"unit={_a(test['unit'])}/></value></observationRange></referenceRange>"
                    "</observation></component>"
                )
            entries.append(
                f'<organizer classCode="BATTERY" moodCode="EVN">{_tpl(T + "4.1")}{_id(panel.uid)}'
                f'{_code("code", panel.panel["code"], LOINC, panel.panel["display"])}<statusCode code="completed"/>'
                f'<effectiveTime value="{d.ts(panel.collected)}"/>{"".join(comps)}</organizer>'
            )
    return _section(T + "2.3", "30954-2", "Results", entries)


def _vitals(d: _Doc, encounters) -> str:
    entries = []
    for e in encounters:
        if not e.vitals:
            continue
        d.add("Observation", f"{ROOT}|{e.uid}:vitals")
        comps = []
        for v in e.vitals:
            parts = (
                [("systolic", v.values[0], ":sys"), ("diastolic", v.values[1], ":dia")]
                if v.kind == "blood_pressure"
                else [(v.kind, v.values[0], "")]
            )
            for kind, number, suffix in parts:
                d.add("Observation", f"{ROOT}|{v.uid}{suffix}")
                meta = CODES["vitals"][kind]
                comps.append(
                    f'<component><observation classCode="OBS" moodCode="EVN">{_tpl(T + "4.27")}'
                    f"{_id(v.uid + suffix)}{_code('code', meta['code'], LOINC, meta['display'])}"
                    f'<statusCode code="completed"/><effectiveTime value="{d.ts(v.when)}"/>'
                    f'<value xsi:type="PQ" value="{_num(number, 1)}" unit={_a(v.unit)}/></observation></component>'
                )
        entries.append(
            f'<organizer classCode="CLUSTER" moodCode="EVN">{_tpl(T + "4.26")}{_id(e.uid + ":vitals")}'
            f'<code code="46680005" codeSystem="{SNOMED}" displayName="Vital signs"/><statusCode code="completed"/>'
            f'<effectiveTime value="{d.ts(e.start)}"/>{"".join(comps)}</organizer>'
        )
    return _section(T + "2.4", "8716-3", "Vital Signs", entries)


def _immunizations(d: _Doc) -> str:
    entries = []
    for i in d.p.immunizations:
        d.add("Immunization", f"{ROOT}|{i.uid}")
        neg = "true" if i.status == "not-done" else "false"
        refusal = (
            f'<entryRelationship typeCode="RSON"><observation classCode="OBS" moodCode="EVN">'
            f"{_tpl(T + '4.53')}{_code('code', i.status_reason['code'], '2.16.840.1.113883.5.8', i.status_reason['display'])}"
            '<statusCode code="completed"/></observation></entryRelationship>'
            if i.status_reason
            else ""
        )
        lot = f"<lotNumberText>{escape(i.lot_number)}</lotNumberText>" if i.lot_number else ""
        entries.append(
            f'<substanceAdministration classCode="SBADM" moodCode="EVN" negationInd="{neg}">{_tpl(T + "4.52")}'
            f'{_id(i.uid)}<statusCode code="completed"/><effectiveTime value="{d.ts(i.when)}"/>'
            f'<consumable><manufacturedProduct classCode="MANU">{_tpl(T + "4.54")}<manufacturedMaterial>'
            f"{_code('code', i.vaccine['cvx'], CVX, i.vaccine['display'])}{lot}</manufacturedMaterial>"
            f"</manufacturedProduct></consumable>{refusal}</substanceAdministration>"
        )
    return _section(T + "2.2", "11369-6", "Immunizations", entries)


def _procedures(d: _Doc) -> str:
    entries = []
    for pr in d.p.procedures:
        d.add("Procedure", f"{ROOT}|{pr.uid}")
        when = (
            f'<effectiveTime><low value="{d.ts(pr.start)}"/><high value="{d.ts(pr.end)}"/></effectiveTime>'
            if pr.end
            else f'<effectiveTime value="{d.ts(pr.start)}"/>'
        )
        entries.append(
            f'<procedure classCode="PROC" moodCode="EVN">{_tpl(T + "4.14")}{_id(pr.uid)}'
            f'{_code("code", pr.code["code"], SNOMED, pr.code["display"])}<statusCode code="completed"/>{when}'
            "</procedure>"
        )
    return _section(T + "2.7", "47519-4", "Procedures", entries)


def _encounters(d: _Doc) -> str:
    entries = []
    for e in d.p.encounters:
        d.add("Encounter", f"{ROOT}|{e.uid}")
        entries.append(
            f'<encounter classCode="ENC" moodCode="EVN">{_tpl(T + "4.49")}{_id(e.uid)}'
            f"{_code('code', e.cls['code'], '2.16.840.1.113883.5.4', e.cls['display'], '', _code('translation', e.type['code'], SNOMED, e.type['display']))}"
            f'<statusCode code="completed"/><effectiveTime><low value="{d.ts(e.start)}"/>'
            f'<high value="{d.ts(e.end)}"/></effectiveTime></encounter>'
        )
    return _section(T + "2.22", "46240-8", "Encounters", entries)


def ccd(p: PatientRecord, seed: int) -> tuple[bytes, _Doc]:
    """The patient's Continuity of Care Document as of the export time."""
    d = _Doc(p)
    body = (
        _problems(d, p.conditions)
        + _allergies(d)
        + _medications(d, p.medications)
        + _results(d, p.encounters)
        + _vitals(d, p.encounters)
        + _immunizations(d)
        + _procedures(d)
        + _encounters(d)
    )
    data = _header(
        d, T + "1.2", "34133-9", "Continuity of Care Document", f"{p.mrn}:ccd", export_time(seed), body, ""
    )
    return data.encode(), d


def discharge(p: PatientRecord, seed: int) -> tuple[bytes, _Doc] | None:
    """A Discharge Summary for the patient's last inpatient stay (None without one)."""
    stays = [e for e in p.encounters if e.cls["code"] == "IMP"]
    if not stays:
        return None
    e = stays[-1]
    d = _Doc(p)
    d.add("Encounter", f"{ROOT}|{e.uid}")
    enc = (
        f"<componentOf><encompassingEncounter>{_id(e.uid)}"
        f"{_code('code', 'IMP', '2.16.840.1.113883.5.4', 'inpatient encounter')}"
        f'<effectiveTime><low value="{d.ts(e.start)}"/><high value="{d.ts(e.end)}"/></effectiveTime>'
        "</encompassingEncounter></componentOf>"
    )
    conditions = [c for c in p.conditions if c.encounter_uid == e.uid]
    meds = [m for m in p.medications if m.encounter_uid == e.uid]
    body = _problems(d, conditions) + _medications(d, meds) + _vitals(d, [e]) + _results(d, [e])
    data = _header(d, T + "1.8", "18842-5", "Discharge Summary", f"{p.mrn}:ds", e.end, body, enc)
    return data.encode(), d


class CcdaExport:
    """Every demo patient's C-CDA documents, one file each, and the distinct resources they yield."""

    def __init__(self, out: Path, seed: int) -> None:
        self.out = out
        self.seed = seed
        self.files: list[FileSummary] = []
        self.keys: set[tuple[str, str]] = set()
        (out / CCDA_DIR).mkdir(parents=True, exist_ok=True)

    def write(self, patient: PatientRecord) -> None:
        docs = [("ccd", ccd(patient, self.seed)), ("discharge", discharge(patient, self.seed))]
        for kind, made in docs:
            if made is None:
                continue
            data, d = made
            rel = f"{CCDA_DIR}/{patient.mrn}-{kind}.xml"
            (self.out / rel).write_bytes(data)
            own = Counter(rtype for rtype, _ in d.keys)
            self.keys |= d.keys
            self.files.append(
                FileSummary(
                    path=rel,
                    format="ccda",
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    units=1,
                    resources=dict(sorted(own.items())),
                )
            )

    def close(self) -> tuple[list[FileSummary], Counter[str]]:
        """The files written and the distinct resources across them (documents share entries)."""
        return self.files, Counter(rtype for rtype, _ in self.keys)
