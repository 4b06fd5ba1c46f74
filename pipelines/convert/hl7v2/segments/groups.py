"""A message's segments gathered into the v2 groups mappers need: patient, visit, order, result, specimen.

Group membership follows segment order: an OBX belongs to the OBR before it, an NTE to the OBX, OBR,
ORC or PID it follows, an RXR to the RXA/RXE/RXO before it, a TQ1 to its order, and a ROL or PRT to
what it follows (the patient, the visit, an order, a result, a procedure or an insurance).
ROL, PRT and TQ1 are placed but not marked used: they count as consumed only once a mapper maps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    obx: Any
    ntes: list[Any] = field(default_factory=list)
    roles: list[Any] = field(default_factory=list)  # PRT after the OBX


@dataclass
class Order:
    orc: Any = None
    obr: Any = None
    rx: Any = None  # RXE, RXO or RXA
    rxrs: list[Any] = field(default_factory=list)
    ntes: list[Any] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    specimens: list[Any] = field(default_factory=list)
    extra: list[Any] = field(default_factory=list)  # further RXA of one order (RAS, VXU)
    tq1s: list[Any] = field(default_factory=list)
    roles: list[Any] = field(default_factory=list)  # ROL/PRT after the ORC, OBR or RX segment


@dataclass
class PatientGroup:
    pid: Any = None
    pd1: Any = None
    pv1: Any = None
    pv2: Any = None
    mrg: Any = None
    ntes: list[Any] = field(default_factory=list)
    nk1s: list[Any] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)  # OBX outside any order (ADT, VXU patient level)
    other: dict[str, list[Any]] = field(default_factory=dict)  # DG1, PR1, AL1, FT1, TXA, SCH, AI*...
    notes_of: dict[int, list[Any]] = field(default_factory=dict)  # NTEs after a collected segment
    patient_roles: list[Any] = field(default_factory=list)  # ROL/PRT after PID, PD1 or NK1
    visit_roles: list[Any] = field(default_factory=list)  # ROL/PRT after PV1 or PV2
    roles_of: dict[int, list[Any]] = field(default_factory=dict)  # ROL/PRT after a collected segment
    timing_of: dict[int, list[Any]] = field(default_factory=dict)  # TQ1 after an SCH


_SINGLE = {"PD1": "pd1", "PV1": "pv1", "PV2": "pv2", "MRG": "mrg"}
_COLLECTED = {
    *("DG1", "PR1", "AL1", "FT1", "TXA", "SCH", "AIS", "AIG", "AIL", "AIP", "RGS"),
    *("IN1", "IN2", "IN3", "GT1", "DB1"),
}


def gather(segments: list[Any]) -> tuple[list[PatientGroup], list[Any], set[int]]:
    """Group segments; returns (patient groups, segments placed before any patient, positions used)."""
    groups: list[PatientGroup] = []
    leading: list[Any] = []
    used: set[int] = set()
    current: PatientGroup | None = None
    order: Order | None = None
    last: Any = None  # where an NTE attaches: a Result, an Order or the PatientGroup
    roles: list[Any] | None = None  # where a ROL or PRT attaches
    timed: list[Any] | None = None  # where a TQ1 outside any order attaches (an SCH's)

    def group() -> PatientGroup:
        nonlocal current
        if current is None:
            current = PatientGroup()
            groups.append(current)
        return current

    for seg in segments:
        name = seg.name
        if name == "PID":
            # A second PID starts the next patient's group (ORU, A40 carry several); SIU's SCH comes first.
            if current is None or current.pid is not None:
                current = PatientGroup()
                groups.append(current)
            current.pid = seg
            order, last, roles = None, current, current.patient_roles
        elif name in _SINGLE:
            g = group()
            if getattr(g, _SINGLE[name]) is not None:
                continue
            setattr(g, _SINGLE[name], seg)
            roles = g.patient_roles if name == "PD1" else g.visit_roles if name in ("PV1", "PV2") else None
        elif name == "NK1":
            group().nk1s.append(seg)
            roles = group().patient_roles
        elif name in ("ROL", "PRT"):
            if roles is not None:
                roles.append(seg)
            continue
        elif name == "TQ1":
            if order is not None:
                order.tq1s.append(seg)
            elif timed is not None:
                timed.append(seg)
            continue
        elif name == "ORC" or (
            name == "OBR" and (order is None or order.obr is not None or order.rx is not None)
        ):
            order = Order()
            group().orders.append(order)
            setattr(order, name.lower(), seg)
            last, roles = order, order.roles
        elif name == "OBR" and order is not None:
            order.obr, last, roles = seg, order, order.roles
        elif name in ("RXE", "RXO", "RXA"):
            if order is None or (order.rx is not None and name != "RXA"):
                order = Order()
                group().orders.append(order)
            if order.rx is None:
                order.rx = seg
            else:
                order.extra.append(seg)
            last, roles = order, order.roles
        elif name == "RXR" and order is not None:
            order.rxrs.append(seg)
        elif name == "OBX":
            res = Result(seg)
            (order.results if order is not None else group().results).append(res)
            last, roles = res, res.roles
        elif name == "SPM" and order is not None:
            order.specimens.append(seg)
            roles = None
        elif name == "NTE":
            if isinstance(last, (Result, Order, PatientGroup)):
                last.ntes.append(seg)
            elif isinstance(last, list):
                last.append(seg)
            else:
                leading.append(seg)
                continue
        elif name in _COLLECTED:
            g = group()
            g.other.setdefault(name, []).append(seg)
            last = g.notes_of.setdefault(seg.position, [])
            roles = g.roles_of.setdefault(seg.position, [])
            timed = g.timing_of.setdefault(seg.position, []) if name == "SCH" else None
        else:
            continue
        used.add(seg.position)
    return groups, leading, used
