"""Condition, AllergyIntolerance, Goal and CarePlan: DSTU2 -> STU3 and STU3 -> R4."""

from __future__ import annotations

from typing import Any

from pipelines.convert.fhir.upgrade.base import Mover, as_list, coded
from pipelines.convert.fhir.upgrade.datatypes import r2_timing


def r2_condition(m: Mover) -> None:
    m.same("identifier", "asserter", "code", "severity", "bodySite")
    m.rename("patient", "subject")
    m.rename("encounter", "context")
    m.rename("dateRecorded", "assertedDate")
    m.rename("category", "category", lambda v: [v])
    m.code("clinicalStatus", "r2.condition-clinical")
    m.code("verificationStatus", "r2.condition-ver-status")
    m.rename("onsetQuantity", "onsetAge")  # DSTU2 onsetQuantity is constrained to Age
    m.choice("onset")
    m.rename("abatementQuantity", "abatementAge")
    m.choice("abatement")
    m.each("stage", lambda c: c.same("summary", "assessment"))
    m.each("evidence", lambda c: c.rename("code", "code", lambda v: [v]).same("detail"))
    if m.has("notes"):
        m.out["note"] = [{"text": m.take("notes")}]


def r3_condition(m: Mover) -> None:
    m.same("identifier", "category", "severity", "code", "bodySite", "subject", "asserter", "note")
    m.rename("context", "encounter")
    m.rename("assertedDate", "recordedDate")
    if m.has("clinicalStatus"):
        code = m.map_code(m.take("clinicalStatus"), "r3.condition-clinical", "clinicalStatus")
        m.out["clinicalStatus"] = coded("condition-clinical", code)
    if m.has("verificationStatus"):
        code = m.map_code(m.take("verificationStatus"), "r3.condition-ver-status", "verificationStatus")
        m.out["verificationStatus"] = coded("condition-ver-status", code)
    # R4 dropped abatementBoolean; HL7's map keeps it as a cross-version extension.
    m.to_extension("abatementBoolean", "Boolean", "abatement")
    m.choice("onset")
    m.choice("abatement")
    m.each("stage", lambda c: c.same("summary", "assessment"))
    if isinstance(m.out.get("stage"), dict):
        m.out["stage"] = [m.out["stage"]]  # R4 Condition.stage repeats
    m.each("evidence", lambda c: c.same("code", "detail"))


def r2_allergy(m: Mover) -> None:
    m.same("identifier", "recorder", "patient", "type")
    m.rename("onset", "onsetDateTime")
    m.rename("recordedDate", "assertedDate")
    m.rename("reporter", "asserter")
    m.rename("substance", "code")
    m.rename("lastOccurence", "lastOccurrence")
    m.rename("note", "note", lambda v: [v])
    m.code("criticality", "r2.allergy-criticality")
    if m.has("category"):
        m.out["category"] = [m.map_code(m.take("category"), "r2.allergy-category", "category")]
    if m.has("status"):
        status = m.take("status")
        clinical = m.map_code(status, "r2.allergy-status-clinical", "status") if status in _CLINICAL else None
        verification = (
            m.map_code(status, "r2.allergy-status-verification", "status") if clinical is None else None
        )
        if clinical:
            m.out["clinicalStatus"] = clinical
        if verification:
            m.out["verificationStatus"] = verification
    m.each("reaction", _r2_reaction)


_CLINICAL = frozenset({"active", "confirmed", "inactive", "resolved"})


def _r2_reaction(m: Mover) -> None:
    m.same("substance", "manifestation", "description", "onset", "severity", "exposureRoute")
    m.rename("note", "note", lambda v: [v])
    m.to_extension("certainty", "Code")


def r3_allergy(m: Mover) -> None:
    m.same("identifier", "type", "category", "criticality", "code", "patient", "lastOccurrence", "note")
    m.same("recorder", "asserter")
    m.rename("assertedDate", "recordedDate")
    m.choice("onset")
    if m.has("clinicalStatus"):
        code = m.map_code(m.take("clinicalStatus"), "r3.allergy-clinical", "clinicalStatus")
        m.out["clinicalStatus"] = coded("allergy-clinical", code)
    if m.has("verificationStatus"):
        code = m.map_code(m.take("verificationStatus"), "r3.allergy-verification", "verificationStatus")
        m.out["verificationStatus"] = coded("allergy-verification", code)
    m.each("reaction", _r3_reaction)


def _r3_reaction(m: Mover) -> None:
    m.same("substance", "manifestation", "description", "onset", "severity", "exposureRoute", "note")


def r2_goal(m: Mover) -> None:
    m.same("identifier", "subject", "category", "statusDate", "priority", "addresses")
    m.choice("start")
    m.code("status", "r2.goal-status")
    if m.has("description"):
        m.out["description"] = {"text": m.take("description")}
    m.rename("author", "expressedBy")
    m.rename("note", "note", as_list)
    target: dict[str, Any] = {}
    for old, new in (("targetDate", "dueDate"), ("targetQuantity", "dueDuration")):
        if m.has(old):
            target[new] = m.take(old)
    if target:
        m.out["target"] = target
    # STU3 statusReason is a string; a coded DSTU2 reason keeps its codes in the extension.
    m.to_extension("statusReason", "CodeableConcept")
    for outcome in as_list(m.take("outcome")):
        if not isinstance(outcome, dict):
            m.fail("upgrade_invalid_element", "Goal.outcome is not an object")
        rest = {k for k in outcome if k not in ("id", "resultCodeableConcept", "resultReference")}
        if rest:
            m.fail("upgrade_unmapped_element", "Goal.outcome element(s) without an upgrade rule")
        if "resultCodeableConcept" in outcome:
            m.out.setdefault("outcomeCode", []).append(outcome["resultCodeableConcept"])
        if "resultReference" in outcome:
            m.out.setdefault("outcomeReference", []).append(outcome["resultReference"])


def r3_goal(m: Mover) -> None:
    m.same("identifier", "category", "priority", "description", "subject", "statusDate", "statusReason")
    m.same("expressedBy", "addresses", "note", "outcomeCode", "outcomeReference")
    m.choice("start")
    if m.has("status"):
        status = m.take("status")
        m.out["lifecycleStatus"] = m.map_code(status, "r3.goal-lifecycle", "status")
        achievement = m.map_code(status, "r3.goal-achievement", "status") if status in _ACHIEVED else None
        if achievement:
            m.out["achievementStatus"] = coded("goal-achievement", achievement)
    m.each("target", lambda c: c.same("measure").choice("detail").choice("due"))
    if isinstance(m.out.get("target"), dict):
        m.out["target"] = [m.out["target"]]  # R4 Goal.target repeats


_ACHIEVED = frozenset(
    {"achieved", "in-progress", "sustaining", "on-target", "ahead-of-target", "behind-target"}
)


def r2_careplan(m: Mover) -> None:
    m.same("identifier", "subject", "context", "period", "author", "category", "description", "addresses")
    m.same("goal")
    m.code("status", "r2.careplan-status")
    m.out["intent"] = "plan"  # a DSTU2 CarePlan is a plan; HL7's map sets the intent STU3 requires
    m.to_extension("modified", "DateTime")
    m.rename("support", "supportingInfo")
    m.rename("note", "note", lambda v: [v])
    for related in as_list(m.take("relatedPlan")):
        code = related.get("code") if isinstance(related, dict) else None
        plan = related.get("plan") if isinstance(related, dict) else None
        if code == "replaces" and plan:
            m.out.setdefault("replaces", []).append(plan)
        elif code == "fulfills" and plan:
            m.out.setdefault("basedOn", []).append(plan)
        else:
            m.fail("upgrade_no_r4_home", "CarePlan.relatedPlan code has no counterpart in the next release")
    participants = []
    for p in as_list(m.take("participant")):
        child = Mover(p, m.release, "CarePlan", "CarePlan.participant")
        child.same("id", "extension", "modifierExtension", "member")
        child.rename("role", "role", lambda v: [v])  # CareTeam.participant.role repeats
        participants.append(child.finish())
    if participants:
        # HL7's map makes a CareTeam of the participants; it travels contained in its plan.
        m.out.setdefault("contained", []).append(
            {"resourceType": "CareTeam", "id": "careteam", "participant": participants}
        )
        m.out["careTeam"] = [{"reference": "#careteam"}]
    m.each("activity", _r2_activity)


def _r2_activity(m: Mover) -> None:
    m.same("progress", "reference")
    m.rename("actionResulting", "outcomeReference")
    m.each("detail", _r2_detail)


def _r2_detail(m: Mover) -> None:
    m.same("category", "code", "reasonCode", "reasonReference", "goal", "location", "performer")
    m.same("dailyAmount", "quantity", "description", "prohibited")
    m.code("status", "r2.careplan-activity-status")
    m.rename("scheduledTiming", "scheduledTiming", r2_timing)
    m.choice("scheduled")
    m.choice("product")
    if m.has("statusReason"):
        reason = m.take("statusReason")
        m.out["statusReason"] = (
            reason.get("text") if isinstance(reason, dict) and set(reason) == {"text"} else None
        )
        if m.out["statusReason"] is None:
            del m.out["statusReason"]
            m.add_extension("statusReason", "CodeableConcept", reason)


def r3_careplan(m: Mover) -> None:
    m.same("identifier", "basedOn", "replaces", "partOf", "intent", "category", "title", "description")
    m.same("subject", "period", "author", "careTeam", "addresses", "supportingInfo", "goal", "note")
    m.same("contained")
    m.code("status", "r3.careplan-status")
    m.rename("context", "encounter")
    m.to_extension("definition", "Reference")
    m.each("activity", _r3_activity)
    if "author" in m.out and isinstance(m.out["author"], list):
        # R4 has one author; the STU3 authors are all contributors, the first also the author.
        authors = m.out.pop("author")
        if authors:
            m.out["author"] = authors[0]
            m.out["contributor"] = authors


def _r3_activity(m: Mover) -> None:
    m.same("outcomeCodeableConcept", "outcomeReference", "progress", "reference")
    m.each("detail", _r3_detail)


def _r3_detail(m: Mover) -> None:
    if not m.has("status"):
        # R4 requires an activity's status; DSTU2 and STU3 did not, and none is invented.
        m.fail("upgrade_missing_required", "source lacks what R4 requires: CarePlan.activity.detail.status")
    m.same("code", "reasonCode", "reasonReference", "goal", "location", "performer", "dailyAmount")
    m.same("quantity", "description")
    m.code("status", "r3.careplan-activity-status")
    m.rename("prohibited", "doNotPerform")
    m.to_extension("category", "CodeableConcept")
    m.to_extension("definition", "Reference")
    if m.has("statusReason"):
        m.out["statusReason"] = {"text": m.take("statusReason")}
    m.choice("scheduled")
    m.choice("product")
