"""Why a message is invalid (hl7apy, slow: quarantine path only) and cheap required-field checks."""

from __future__ import annotations

import functools
import re
from typing import Any

from pipelines.convert.hl7v2.tokenizer import HL7_NULL, Hl7ParseError, Message, parse_message

# Message types whose every message is about one patient: the PID segment must be there.
_PID_REQUIRED = frozenset({"ADT", "BAR", "DFT", "MDM", "PPR", "RAS", "RDE", "RDS", "VXU"})
# ADT events that carry no patient (bed status, census, ...).
_ADT_WITHOUT_PATIENT = frozenset({"A20"})
_NAME_PAIR = re.compile(r"([A-Z][A-Z0-9]{2}(?:_[A-Z0-9]+)*)\.([A-Z][A-Z0-9]{2}(?:_[A-Z0-9]+)*)")
_VERSION = re.compile(r"\d+(?:\.\d+){0,2}")
_ELEMENT = re.compile(r"<(Segment|Field|Component|SubComponent|Group) ([A-Z][A-Z0-9_]*)")

# Trigger events that share another event's message structure (HL7 table 0354), for senders that leave
# MSH-9.3 empty (all versions before 2.3.1 do).
_SHARED = {
    "ADT": {
        **dict.fromkeys(("A04", "A08", "A13"), "ADT_A01"),
        **dict.fromkeys(("A14", "A28", "A31"), "ADT_A05"),
        "A07": "ADT_A06",
        **dict.fromkeys(("A10", "A11"), "ADT_A09"),
        **dict.fromkeys(("A22", "A23", "A25", "A26", "A27", "A29", "A32", "A33"), "ADT_A21"),
        **dict.fromkeys(("A34", "A35", "A36", "A46", "A47", "A48", "A49"), "ADT_A30"),
        **dict.fromkeys(("A40", "A41", "A42"), "ADT_A39"),
        "A51": "ADT_A50",
        "A53": "ADT_A52",
        "A55": "ADT_A54",
        "A62": "ADT_A61",
    },
    "SIU": {f"S{n}": "SIU_S12" for n in (*range(13, 25), 26)},
    "MDM": {
        **dict.fromkeys(("T03", "T05", "T07", "T09", "T11"), "MDM_T01"),
        **dict.fromkeys(("T04", "T06", "T08", "T10"), "MDM_T02"),
    },
    "ORU": dict.fromkeys(("R31", "R32"), "ORU_R30"),
    "PPR": dict.fromkeys(("PC2", "PC3"), "PPR_PC1"),
    "BAR": {"P06": "BAR_P06"},
}


def required_fields_missing(msg: Message) -> list[str]:
    """Names ("MSH-10", "PID-3", "PID") of the required items this message lacks; [] when none."""
    missing: list[str] = []
    if not msg.message_code or msg.message_code == HL7_NULL:
        missing.append("MSH-9")
    if not msg.control_id or msg.control_id == HL7_NULL:
        missing.append("MSH-10")
    pids = msg.all("PID")
    if not pids:
        if msg.message_code in _PID_REQUIRED and not (
            msg.message_code == "ADT" and msg.trigger_event in _ADT_WITHOUT_PATIENT
        ):
            missing.append("PID")
        return missing
    for pid in pids:
        value = pid.get(3)
        if not value or value == HL7_NULL:
            missing.append("PID-3")
            break
    return missing


def explain_invalid(raw: bytes, message: Message | None) -> tuple[str | None, str]:
    """(reason code, message without record values) for a message that failed; (None, text) when the
    validator finds nothing wrong or cannot judge. Never raises."""
    try:
        if message is None:
            try:
                message = parse_message(raw)
            except Hl7ParseError as exc:
                return exc.reason, exc.message
        return _explain(message)
    except Exception as exc:  # hl7apy is not defensive about odd input: a finding, never a crash
        return None, f"the structure validator failed ({type(exc).__name__})"


def _label(msg: Message) -> str:
    # Only the shapes of codes are kept, so a malformed MSH cannot smuggle text into the message.
    code = re.sub(r"[^A-Z0-9]", "", (msg.message_code or "").upper())[:3] or "?"
    trig = re.sub(r"[^A-Z0-9]", "", (msg.trigger_event or "").upper())[:3]
    ver = _clean_version(msg.version)
    return (f"{code}^{trig}" if trig else code) + (f" v{ver}" if ver else "")


def _clean_version(version: str | None) -> str | None:
    m = _VERSION.match(version or "")
    return m.group(0) if m else None


@functools.cache
def _hl7apy_lookup_cached() -> None:
    """hl7apy looks its version's library up on every element it builds (~8,000 imports a message);
    a module is a singleton per version, so the lookup is cached: a third of an explanation's cost."""
    import hl7apy
    import hl7apy.core
    import hl7apy.factories

    lookup = functools.cache(hl7apy.load_library)
    for module in (hl7apy, hl7apy.core, hl7apy.factories):
        module.load_library = lookup


def _explain(msg: Message) -> tuple[str | None, str]:
    from hl7apy import SUPPORTED_LIBRARIES  # imported here: slow, and only this path needs it

    _hl7apy_lookup_cached()
    label = _label(msg)
    version = _clean_version(msg.version)
    if version is None:
        return None, f"{label}: MSH-12 has no version the validator knows"
    if version not in SUPPORTED_LIBRARIES:
        return None, f"{label}: version not known to the validator"
    tree = _hl7apy_parse(msg)
    found = _tree_segments(tree) if tree is not None and getattr(tree, "name", None) else []
    if not found:
        return None, f"{label}: message structure not known to the validator"
    ours = [s.name for s in msg.segments]
    j = 0
    for i, name in enumerate(ours):
        if j < len(found) and found[j] == name:
            j += 1
        elif not name.startswith("Z"):  # Z-segments are local extensions, allowed anywhere by agreement
            return "hl7_structure_invalid", f"{label}: segment {name} not allowed at position {i + 1}"
    problem = _validate(tree)
    if problem is not None:
        return "hl7_structure_invalid", f"{label}: {problem}"
    missing = required_fields_missing(msg)
    if missing:
        return "hl7_missing_required", f"{label}: empty or missing {', '.join(missing)}"
    return None, f"{label}: no structural error found"


def _hl7apy_parse(msg: Message) -> Any:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message as Hl7apyMessage
    from hl7apy.parser import get_message_info, parse_segments

    structure = _structure(msg)
    if structure is None:
        return None
    d = msg.delimiters
    segs = [s.raw.replace("\n", " ") for s in msg.segments]
    # hl7apy reads only the classic four encoding characters.
    enc = d.component + d.repetition + (d.escape or "\\") + d.subcomponent
    msh = msg.segments[0]
    segs[0] = d.field.join(["MSH", enc, *(msh.field(n).raw for n in range(3, msh.field_count + 1))])
    text = "\r".join(segs) + "\r"
    encoding_chars, _, version = get_message_info(text)
    # Built directly with the structure found above, since pre-2.3.1 messages do not name it in MSH-9.
    tolerant = VALIDATION_LEVEL.TOLERANT
    tree = Hl7apyMessage(structure, version=version, validation_level=tolerant, encoding_chars=encoding_chars)
    tree.children = parse_segments(text, tree.version, encoding_chars, tolerant, tree.reference, True)
    return tree


def _structure(msg: Message) -> str | None:
    from hl7apy import load_reference
    from hl7apy.exceptions import ChildNotFound, UnsupportedVersion

    code, trigger = msg.message_code, msg.trigger_event or ""
    candidates = [msg.structure, _SHARED.get(code, {}).get(trigger), f"{code}_{trigger}", code]
    if code == "ADT" and trigger in ("A05", "A14", "A28", "A31"):
        candidates.append("ADT_A01")  # before v2.4 these events used the A01 structure
    for name in candidates:
        if not name or not re.fullmatch(r"[A-Z][A-Z0-9]{2}(?:_[A-Z0-9]{3})?", name):
            continue
        try:
            load_reference(name, "Message", _clean_version(msg.version))
        except (ChildNotFound, UnsupportedVersion, KeyError, ValueError):
            continue
        return name
    return None


def _tree_segments(node: Any) -> list[str]:
    from hl7apy.core import Group, Segment

    out: list[str] = []
    for child in node.children:
        if isinstance(child, Segment):
            out.append(child.name)
        elif isinstance(child, Group):
            out.extend(_tree_segments(child))
    return out


def _validate(tree: Any) -> str | None:
    from hl7apy.exceptions import ValidationError, ValidationWarning

    try:
        tree.validate()
    except ValidationWarning:
        return None  # warnings concern values (lengths, table codes), not structure
    except ValidationError as exc:
        # hl7apy's texts can quote values; keep only the element names it reports.
        text = str(exc)
        pair = _NAME_PAIR.search(text)
        element = _ELEMENT.search(text)
        if text.startswith("Invalid children detected") and element is not None:
            return f"{element.group(2)} holds items its definition does not have"
        where = f"{pair.group(2)} in {pair.group(1)}" if pair else "an element"
        if text.startswith("Missing required child"):
            return f"required {where} is missing"
        if text.startswith("Child limit exceeded"):
            return f"{where} repeats more often than allowed"
        if text.startswith("Datatype"):
            return f"{where} has the wrong data type"
        return f"{where} is not valid"
    return None
