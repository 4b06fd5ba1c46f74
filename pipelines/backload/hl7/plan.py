"""The HL7 back-load plan: per patient, registration first, then results, immunizations and documents;
each message built, checked against its structure, and given a deterministic control id."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from pipelines.backload.hl7 import messages as m
from pipelines.backload.hl7.encode import Coder, ts
from pipelines.backload.hl7.parts import SUBJECT, Part, follow, person_survivors, references, replaced_by
from pipelines.backload.hl7.segments import Header, maps
from pipelines.backload.hl7.structure import check, check_segments, control_id_fits
from pipelines.backload.profiles import target_profile
from pipelines.common import arrow
from pipelines.common.reasons import check_reason
from pipelines.common.warehouse import resource_tables
from terminology.target_codings import code_values

ORDER = {"adt": 0, "oru": 1, "vxu": 2, "mdm": 3}
# Looked up by one message each (a report's results and specimens): a builder process need not keep them.
LOOKED_UP_ONCE = frozenset({"Observation", "Specimen"})
LOOKUP_TYPES = (
    "Patient", "Encounter", "Observation", "Practitioner", "Organization", "Location", "Specimen",
)  # fmt: skip


@dataclass
class Planned:
    kind: str
    resource_type: str
    warehouse_id: str
    patient_id: str | None
    status: str = "send"  # send, not_sendable, unchanged
    reason: str | None = None
    detail: str | None = None  # field and segment names only
    control_id: str | None = None
    message_type: str | None = None
    content_sha256: str | None = None
    text: str | None = None
    seq: int = 0
    data: bytes | None = None  # text as sent (UTF-8), encoded once: its hash is the content hash
    sort_time: str = ""

    def refuse(self, reason: str, detail: str) -> None:
        self.status, self.reason, self.detail = "not_sendable", check_reason(reason, "not_sendable"), detail
        self.text = self.data = None


class Store:
    """Resources by "Type/id", read in one query per type; each parsed when first needed (a builder process
    parses the ones its messages look up). Patient merges (link replaced-by) followed to the survivor.

    With a part (parts.cut), only the part's message resources and Patient records are read, and of the other
    types what these refer to (and what those refer to, and so on): what the part's messages can look up.
    `messages` is then the keys of the part's message resources (None: every resource of a message type)."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, types: Iterable[str], part: Part | None = None
    ) -> None:
        self.raw: dict[str, str] = {}
        self.parsed: dict[str, dict[str, Any]] = {}
        # Types whose parsed resources are not kept: a builder process that meets each of them once (a
        # report's observations) would otherwise keep them all, and fresh memory costs a page fault a page.
        self.once: frozenset[str] = frozenset()
        self.stand_in: set[str] = set()
        self.messages: set[str] | None = None
        tables = set(resource_tables(con))
        present = sorted(set(types) & tables)
        if part is None:
            for t in present:
                self._read(con, t, None)
        else:
            for t in present:
                if t == "Patient":
                    self._read(con, t, sorted(set(part.patients) | set(part.ids.get(t, ()))))
                elif t in part.ids:
                    self._read(con, t, part.ids[t])
            others = {t for t in present if t not in part.ids and t != "Patient"}
            self.messages = {f"{t}/{i}" for t, ids in part.ids.items() for i in ids}
            new = list(self.raw.values())
            while new and others:
                before = len(self.raw)
                for t, ids in sorted(references(new, others).items()):
                    self._read(con, t, sorted(i for i in ids if f"{t}/{i}" not in self.raw))
                new = list(self.raw.values())[before:]
        # Identity resolution's merges (ops.person_map, where that stage has run): one survivor per person.
        self.person_survivor = person_survivors(con)

    def _read(self, con: duckdb.DuckDBPyConnection, rtype: str, ids: list[str] | None) -> None:
        """Rows of one type (the given ids only, when given), in id order."""
        if ids is not None and not ids:
            return
        query = f'SELECT id, resource, reference_only FROM fhir."{rtype}"'
        if ids is None:
            rows = con.execute(f"{query} ORDER BY id").fetchall()
        else:
            wanted = arrow.table({"id": arrow.array(ids, pa.string())})  # noqa: F841 (read by name below)
            rows = con.execute(f"{query} WHERE id IN (SELECT id FROM wanted) ORDER BY id").fetchall()
        for rid, body, ref_only in rows:
            self.raw[f"{rtype}/{rid}"] = body
            if ref_only:
                self.stand_in.add(f"{rtype}/{rid}")

    def __contains__(self, key: Any) -> bool:
        return key in self.raw

    def resource(self, key: str) -> dict[str, Any] | None:
        found = self.parsed.get(key)
        if found is None:
            body = self.raw.get(key)
            if body is None:
                return None
            found = orjson.loads(body)
            if key.partition("/")[0] not in self.once:
                self.parsed[key] = found
        return found

    def get(self, ref: Any) -> dict[str, Any] | None:
        key = ref.get("reference") if isinstance(ref, dict) else ref
        return self.resource(key) if isinstance(key, str) else None

    def survivor(self, key: str) -> str:
        """Follow Patient.link replaced-by, then ops.person_map, to the record that survives (cycles stop)."""

        def step(k: str) -> str | None:
            nxt = replaced_by((self.resource(k) or {}).get("link"), self.raw.__contains__)
            if nxt is None and self.person_survivor.get(k) in self.raw:
                nxt = self.person_survivor[k]
            return nxt

        return follow(key, step)


def control_id(target: str, kind: str, key: str, sha: str) -> str:
    """MSH-10: the same message content always gets the same id (20 characters, ST's usual limit)."""
    return hashlib.sha256(f"{target}\0{kind}\0{key}\0{sha}".encode()).hexdigest()[:20].upper()


@dataclass
class Prepared:
    """The plan before building: every message in send order with what its builder needs."""

    ctx: m.Context
    target: str
    when: str
    acknowledged: dict[str, str]
    sent_patients: set[str]
    work: list[tuple[Planned, dict[str, Any] | None, dict[str, Any] | None]]  # (message, resource, patient)
    store: Store | None = None


def prepare(
    con: duckdb.DuckDBPyConnection,
    target: str,
    kinds: list[str],
    header: Header,
    when: str,
    acknowledged: dict[str, str],
    files_root: Path | None = None,
    alias: bool = True,
    part: Part | None = None,
    first: int = 1,
    coder: Coder | None = None,
) -> Prepared:
    """Read what the messages need (once), decide merges and references, and order the messages: per patient,
    registration first, then by time; those refused already go last. Nothing is built yet.

    `part` (parts.cut): the plan's messages of that part only, numbered from `first`; `coder`: one made
    before (coder_for), kept from part to part."""
    coder = coder or coder_for(con, target, alias)
    wanted = {m.SOURCE_TYPE[k] for k in kinds}
    store = Store(con, set(LOOKUP_TYPES) | wanted, part)
    ctx = m.Context(header, coder, store.get, files_root)
    sent_patients = {key for key in acknowledged.values() if key.startswith("adt:")}
    work: list[tuple[Planned, dict[str, Any] | None, dict[str, Any] | None]] = []
    kind_of = {m.SOURCE_TYPE[k]: k for k in reversed(kinds)}
    for key in sorted(store.raw):
        rtype, _, rid = key.partition("/")
        kind = kind_of.get(rtype)
        if (
            kind is None
            or key in store.stand_in
            or (store.messages is not None and key not in store.messages)
        ):
            continue  # not a message; or a record another part's messages are planned from
        res = store.resource(key)
        assert res is not None
        p = Planned(kind, rtype, rid, None)
        patient = None
        if kind == "adt":
            survivor = store.survivor(key)
            p.patient_id = survivor.partition("/")[2]
            if survivor != key:
                p.refuse("hl7_patient_merged", "Patient.link")
            patient = res
        else:
            ref = (res.get(SUBJECT[rtype]) or {}).get("reference")
            is_patient = isinstance(ref, str) and ref.startswith("Patient/") and ref in store
            patient_key = store.survivor(ref) if is_patient else None
            patient = store.resource(patient_key) if patient_key else None
            if patient is None or not patient_key:
                p.refuse("hl7_reference_missing", f"{rtype}.{SUBJECT[rtype]}")
            else:
                p.patient_id = patient_key.partition("/")[2]
                p.sort_time = _time_of(res)
        work.append((p, res, patient))
    work.sort(key=lambda w: (w[0].patient_id or "", ORDER[w[0].kind], w[0].sort_time, w[0].warehouse_id))
    work.sort(key=lambda w: w[0].status != "send")  # stable: the sendable ones first, in patient order
    for i, (p, _res, _patient) in enumerate(work, start=first):
        p.seq = i
    return Prepared(ctx, target, when, acknowledged, sent_patients, work, store)


def coder_for(con: duckdb.DuckDBPyConnection, target: str, alias: bool = True) -> Coder:
    """The target's coding rules (terminology/targets), with the site's Millennium aliases where asked for
    and the CODE_VALUE extract where the warehouse has one."""
    rules = target_profile(target).codings
    has_cv = bool(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'terminology' "
        "AND table_name = 'millennium_code_values'"
    ).fetchone()[0])  # fmt: skip
    return Coder(rules, maps()["alias_system_name"] if alias else None, code_values(con) if has_cv else None)


def build(prep: Prepared, p: Planned, res: dict[str, Any] | None, patient: dict[str, Any] | None) -> Planned:
    """Build and check one message of the plan (one already refused stays as it is)."""
    if p.status == "send" and res is not None and patient is not None:
        _build(p, prep.ctx, res, patient, prep.target, prep.when, prep.acknowledged, prep.sent_patients)
    return p


def build_plan(*args: Any, **kwargs: Any) -> list[Planned]:
    """The whole plan built at once (prepare's arguments); acknowledged maps a control id already answered
    AA to its warehouse key (unchanged messages)."""
    prep = prepare(*args, **kwargs)
    return [build(prep, *w) for w in prep.work]


def _time_of(res: dict[str, Any]) -> str:
    for k in ("effectiveDateTime", "occurrenceDateTime", "date", "issued"):
        if res.get(k):
            return ts(res[k]) or ""
    return ts((res.get("effectivePeriod") or {}).get("start")) or ""


PLACEHOLDER = "CONTROLID"  # MSH-10 while building: the control id is a hash of the message built with it
_PLACED = f"|{PLACEHOLDER}|"
_PLACED_BYTES = _PLACED.encode()
_BUILDERS = {"oru": m.oru, "vxu": m.vxu, "mdm": m.mdm}


def _build(
    p: Planned,
    ctx: m.Context,
    res: dict[str, Any],
    patient: dict[str, Any],
    target: str,
    when: str,
    acknowledged: dict[str, str],
    sent_patients: set[str],
) -> None:
    key = f"{p.kind}:{p.resource_type}/{p.warehouse_id}"
    try:
        if p.kind == "adt":
            built = m.adt(ctx, res, PLACEHOLDER, when, update=False)
        else:
            built = _BUILDERS[p.kind](ctx, res, patient, PLACEHOLDER, when)
    except m.NotBuildable as exc:
        p.refuse(exc.reason, exc.detail)
        return
    data = built.text.encode()
    sha = hashlib.sha256(data).hexdigest()
    cid = control_id(target, p.kind, key, sha)
    if acknowledged.get(cid) == key:
        p.status, p.control_id, p.content_sha256 = "unchanged", cid, sha
        p.message_type = built.message_type
        return
    if p.kind == "adt" and key in sent_patients:  # registered before with other content: an update
        built = m.adt(ctx, res, PLACEHOLDER, when, update=True)
        data = built.text.encode()
    placed = f"|{cid}|"
    text = built.text.replace(_PLACED, placed, 1)
    # Checked with the placeholder in MSH-10 where the version's MSH-10 takes a control id (20 characters)
    # as readily: the MSH line is then the same for every message of a kind, and its findings are known.
    version = ctx.header.version
    if control_id_fits(version):
        findings = check_segments(built.segments, built.structure, version)
    else:
        findings = check(text, built.structure, version)
    p.control_id, p.content_sha256, p.message_type = cid, sha, built.message_type
    if findings:
        p.refuse("hl7_structure", "; ".join(sorted(set(findings))[:5]))
        return
    p.text = text
    # The bytes that go, from those already encoded for the hash (a document's message is tens of kB).
    p.data = data.replace(_PLACED_BYTES, placed.encode(), 1)
