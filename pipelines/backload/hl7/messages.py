"""Whole messages from warehouse resources: ADT^A28/A31, ORU^R01, VXU^V04, MDM^T02; one builder per kind."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.backload.hl7 import segments as seg
from pipelines.backload.hl7.encode import Coder, comp, esc, segment, xcn_of

KINDS = ("adt", "oru", "vxu", "mdm")
SOURCE_TYPE = {"adt": "Patient", "oru": "DiagnosticReport", "vxu": "Immunization", "mdm": "DocumentReference"}


class NotBuildable(Exception):
    """The resource cannot become this message; reason is a code in schemas/reason_codes.json."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(slots=True)  # one per message: a frozen dataclass's __init__ costs a setattr call per field
class Built:
    kind: str
    message_type: str  # MSH-9
    structure: str  # the hl7apy message structure checked against
    text: str  # segments joined by CR, with a final CR
    segments: list[str] = field(default_factory=list)  # the same, one string per segment


@dataclass
class Context:
    header: seg.Header
    coder: Coder
    lookup: Callable[[Any], dict[str, Any] | None]
    files_root: Path | None = None  # where DocumentReference attachment urls (landing/...) resolve
    # A patient's PID and a visit's PV1, built once: every message of the patient carries them.
    _pids: dict[str, str] = field(default_factory=dict)
    _pv1s: dict[str, str] = field(default_factory=dict)
    _real_root: str | None = None
    _real_folders: dict[str, str] = field(default_factory=dict)
    _mshs: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    _people: dict[str, str | None] = field(default_factory=dict)

    def real_root(self) -> str | None:
        """files_root with its links resolved, once (every document's url is checked against it)."""
        if self.files_root is None:
            return None
        if self._real_root is None:
            self._real_root = os.path.realpath(self.files_root)
        return self._real_root

    def real_folder(self, folder: str) -> str:
        """A folder with its links resolved, once per folder: a plan's documents lie in a few, and resolving
        walks every component of the path."""
        found = self._real_folders.get(folder)
        if found is None:
            if len(self._real_folders) >= 10_000:
                self._real_folders.clear()
            found = self._real_folders[folder] = os.path.realpath(folder)
        return found

    def pid(self, patient: dict[str, Any]) -> str:
        return _once(self._pids, patient.get("id"), lambda: seg.pid(patient, self.coder))

    def pv1(self, ref: Any) -> str:
        encounter = self.lookup(ref) if ref else None
        return _once(
            self._pv1s,
            encounter.get("id") if encounter else "",
            lambda: seg.pv1(encounter, self.lookup, self.person),
        )

    def person(self, ref: Any) -> str | None:
        """A Practitioner's reference as XCN, once per reference: a site's clinicians sign message after
        message (general practitioner, attending, interpreter, performer, author)."""
        key = ref.get("reference") if isinstance(ref, dict) else ref
        if not isinstance(key, str):
            return xcn_of(self.lookup(ref))
        found = self._people.get(key, _MISSING)
        if found is _MISSING:
            if len(self._people) >= 50_000:
                self._people.clear()
            found = self._people[key] = xcn_of(self.lookup(ref))
        return found  # type: ignore[return-value]


def _once(memo: dict[str, str], key: Any, make: Callable[[], str]) -> str:
    if not isinstance(key, str):
        return make()
    text = memo.get(key)
    if text is None:
        text = memo[key] = make()
    return text


_MISSING = object()
_STRUCTURES = {"R01": "ORU_R01", "V04": "VXU_V04", "T02": "MDM_T02"}


def _structure(version: str, event: str) -> str:
    if event in ("A28", "A31"):
        return "ADT_A05" if version != "2.3.1" else "ADT_A01"
    return _STRUCTURES[event]


def _msg_type(version: str, code: str, event: str) -> str:
    return comp(code, event, _structure(version, event))


def assemble(
    ctx: Context, code: str, event: str, control_id: str, when: str, body: Sequence[str | None]
) -> Built:
    v = ctx.header.version
    key = (code, event, control_id, when)
    head = ctx._mshs.get(key)  # the same for every message of a kind in a plan (MSH-10 a placeholder)
    if head is None:
        head = ctx._mshs[key] = seg.msh(ctx.header, _msg_type(v, code, event), control_id, when)
    segments = [head, *[s for s in body if s]]
    text = "\r".join(segments) + "\r"
    return Built(code.lower(), f"{code}^{event}", _structure(v, event), text, segments)


def adt(ctx: Context, patient: dict[str, Any], control_id: str, when: str, update: bool) -> Built:
    """A28 (add person information) the first time; A31 (update) once sent before with other content."""
    event = "A31" if update else "A28"
    body = [
        seg.evn(event, when),
        ctx.pid(patient),
        seg.pd1(patient, ctx.person),
        ctx.pv1(None),
    ]
    return assemble(ctx, "ADT", event, control_id, when, body)


def oru(ctx: Context, report: dict[str, Any], patient: dict[str, Any], control_id: str, when: str) -> Built:
    v = ctx.header.version
    observations = [ctx.lookup(r) for r in report.get("result") or []]
    if None in observations:
        raise NotBuildable("hl7_reference_missing", "DiagnosticReport.result")
    body = [ctx.pid(patient), ctx.pv1(report.get("encounter"))]
    ids = seg.order_ids(report)
    body += [seg.orc(report, ids=ids), seg.obr(report, ctx.coder, ctx.person, v, ids)]
    n = 1  # OBX-1 runs over the observations and their components
    for i, obs in enumerate(observations, start=1):
        assert obs is not None
        group, count = seg.obxs(obs, n, i, ctx.coder, v)
        body += group
        n += count
    if v != "2.3.1":  # SPM arrived in 2.5
        for i, ref in enumerate(report.get("specimen") or [], start=1):
            specimen = ctx.lookup(ref)
            if specimen is not None:
                body.append(seg.spm(specimen, i, ctx.coder))
    return assemble(ctx, "ORU", "R01", control_id, when, body)


def vxu(ctx: Context, im: dict[str, Any], patient: dict[str, Any], control_id: str, when: str) -> Built:
    body = [
        ctx.pid(patient),
        ctx.pv1(im.get("encounter")) if im.get("encounter") else None,
        seg.orc(im),
        seg.rxa(im, ctx.coder, ctx.lookup, ctx.person),
        seg.rxr(im, ctx.coder),
    ]
    return assemble(ctx, "VXU", "V04", control_id, when, [b for b in body if b])


def mdm(ctx: Context, doc: dict[str, Any], patient: dict[str, Any], control_id: str, when: str) -> Built:
    v = ctx.header.version
    encounters = (doc.get("context") or {}).get("encounter") or []
    body = [
        seg.evn("T02", when),
        ctx.pid(patient),
        ctx.pv1(encounters[0] if encounters else None),
        seg.txa(doc, ctx.coder, ctx.person, v),
    ]
    body += _content(ctx, doc)
    return assemble(ctx, "MDM", "T02", control_id, when, body)


def _content(ctx: Context, doc: dict[str, Any]) -> list[str]:
    """Text attachments as TX lines (one OBX per line), anything else as one ED (Base64) OBX."""
    out: list[str] = []
    for c in doc.get("content") or []:
        a = c.get("attachment") or {}
        data = _bytes(ctx, a)
        if data is None:
            continue
        kind = (a.get("contentType") or "application/octet-stream").split(";")[0].strip()
        if kind.startswith("text/plain"):
            for line in data.decode("utf-8", errors="replace").split("\n"):
                out.append(_obx(ctx, doc, len(out) + 1, "TX", esc(line.rstrip("\r"))))
        else:
            major, _, minor = kind.partition("/")
            value = comp(None, esc(major), esc(minor), "Base64", base64.b64encode(data).decode())
            out.append(_obx(ctx, doc, len(out) + 1, "ED", value))
    if not out:
        raise NotBuildable("hl7_document_content_missing", "DocumentReference.content.attachment")
    return out


def _bytes(ctx: Context, a: Any) -> bytes | None:
    if a.get("data"):
        try:
            return base64.b64decode(a["data"], validate=True)
        except ValueError:
            return None
    url = a.get("url")
    root = ctx.real_root()
    if not url or root is None or "://" in url or url.startswith("/"):
        return None
    # Resolved (links followed: the folder's once per plan, the file's own name here) and kept inside the
    # root: a url cannot reach outside it.
    folder, name = os.path.split(os.path.join(root, url))
    path = os.path.join(ctx.real_folder(folder), name)
    if os.path.islink(path):
        path = os.path.realpath(path)
    if not path.startswith(root + os.sep):
        return None
    try:
        # Not following a link the name became since (it would lead anywhere); not waiting on a pipe.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _obx(ctx: Context, doc: dict[str, Any], n: int, kind: str, value: str) -> str:
    # OBX-3 is required: the document's type names what the content is.
    code = ctx.coder.cwe(doc.get("type")) or "DOC^document^L"
    return segment("OBX", {1: str(n), 2: kind, 3: code, 4: "1", 5: value, 11: "F"})
