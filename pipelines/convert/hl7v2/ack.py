"""HL7 v2 acknowledgements (MSH + MSA, + ERR for errors) for a live MLLP listener.

Written directly rather than through hl7apy: hl7apy builds about 120 ACKs a second (this builder tens of
thousands), which took the listener from ~800 to ~56 acknowledged messages a second over five loopback
connections. hl7apy instead checks, in the tests, that every ACK is a valid ACK of the inbound version.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from pipelines.convert.hl7v2.tokenizer import Delimiters, Hl7ParseError, Message, parse_message

ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_DEFAULT = Delimiters("|", "^", "~", "\\", "&", None)
_DEFAULT_VERSION = "2.5.1"
_ERR_TEXT = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "207": "Application internal error",
}
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def build_ack(
    message: Message | None,
    raw: bytes,
    code: str,
    text: str | None = None,
    *,
    error_code: str = "207",
    control_id: str | None = None,
    location: tuple[str, int, int] | None = None,
    now: datetime | None = None,
) -> bytes:
    """An ACK for message (or, when it could not be parsed, for raw): \\r-terminated segments.

    MSH-5/6 answer the original MSH-3/4, MSH-9 is ACK^<trigger>^ACK, MSH-10 a new control id, MSA-2 the
    original control id. error_code (HL7 table 0357) goes into ERR for AE/AR/CE/CR, with location
    (segment id, sequence, field position) when one field is at fault.
    """
    if code not in ACK_CODES:
        raise ValueError("code must be one of AA, AE, AR, CA, CE, CR")
    if message is None:
        try:
            message = parse_message(raw)
        except Hl7ParseError:
            message = None
    if message is not None:
        d = message.delimiters
        msh = message.segments[0]
        sender = (msh.field(3).raw, msh.field(4).raw)
        receiver = (msh.field(5).raw, msh.field(6).raw)
        trigger = msh.field(9).value(2) or ""
        original_id = msh.field(10).raw
        processing = msh.field(11).raw
        version_raw = msh.field(12).raw
        charset_field = msh.field(18).raw
        codec = message.charset
    else:
        d = _DEFAULT
        head = _salvage_msh(raw)
        sender, receiver = (head.get(3, ""), head.get(4, "")), (head.get(5, ""), head.get(6, ""))
        trigger = head.get(9, "").split("^")[1] if "^" in head.get(9, "") else ""
        original_id, processing, version_raw, charset_field = head.get(10, ""), head.get(11, ""), "", ""
        codec = "ascii"
    version = _version(version_raw or (message.version if message else None))
    vtuple = _vtuple(version)
    esc = _escaper(d)
    when = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    new_id = control_id or uuid.uuid4().hex[:20]
    msg_type = ["ACK", esc(trigger)]
    if vtuple >= (2, 3, 1):
        msg_type.append("ACK")  # MSH-9.3 (message structure) exists from v2.3.1
    msh_fields = [
        "MSH",
        d.component + d.repetition + (d.escape or "") + d.subcomponent + (d.truncation or ""),
        receiver[0],  # MSH-3: we are the application the original was sent to
        receiver[1],
        sender[0],  # MSH-5/6: back to the original sender
        sender[1],
        when,
        "",
        d.component.join(msg_type).rstrip(d.component),
        esc(new_id),
        processing or "P",
        esc(version),
    ]
    if charset_field:
        msh_fields += ["", "", "", "", "", charset_field]
    segments = [d.field.join(msh_fields)]
    msa = ["MSA", code, original_id]
    if text and vtuple < (2, 7):
        msa.append(esc(text))  # MSA-3, withdrawn in v2.7
    segments.append(d.field.join(msa))
    if code not in ("AA", "CA"):
        segments.append(_err(d, esc, vtuple, error_code, text, location))
    out = "\r".join(segments) + "\r"
    return out.encode(codec, errors="replace")


def _err(
    d: Delimiters,
    esc: Callable[[str], str],
    vtuple: tuple[int, ...],
    error_code: str,
    text: str | None,
    location: tuple[str, int, int] | None,
) -> str:
    name = esc(_ERR_TEXT.get(error_code, "Application internal error"))
    where = [esc(location[0]), str(location[1]), str(location[2])] if location else ["", "", ""]
    if vtuple >= (2, 5):
        # ERR-2 location (ERL), ERR-3 (CWE, table 0357) and ERR-4 severity; ERR-8 the user message.
        erl = d.component.join(where) if location else ""
        fields = ["ERR", "", erl, d.component.join([esc(error_code), name, "HL70357"]), "E"]
        if text:
            fields += ["", "", "", esc(text)]
        return d.field.join(fields)
    # Before v2.5 ERR-1 is error code and location (ELD): segment^sequence^field^code&text&table.
    eld = [*where, d.subcomponent.join([esc(error_code), name, "HL70357"])]
    return "ERR" + d.field + d.component.join(eld)


def _escaper(d: Delimiters) -> Callable[[str], str]:
    pairs = [(d.escape, "E"), (d.field, "F"), (d.component, "S"), (d.repetition, "R"), (d.subcomponent, "T")]
    if d.truncation:
        pairs.append((d.truncation, "P"))

    def esc(value: str) -> str:
        if d.escape is None:
            # No escape character: delimiters cannot be written, so they are dropped.
            return "".join(c for c in value if c not in (d.field, d.component, d.repetition, d.subcomponent))
        out = []
        table = {ch: f"{d.escape}{name}{d.escape}" for ch, name in pairs if ch}
        for c in value.replace("\r\n", "\n").replace("\r", "\n"):
            out.append(table.get(c) or (f"{d.escape}.br{d.escape}" if c == "\n" else c))
        return "".join(out)

    return esc


def _version(raw: str | None) -> str:
    m = _VERSION.match(raw or "")
    return m.group(0) if m else _DEFAULT_VERSION


def _vtuple(version: str) -> tuple[int, ...]:
    m = _VERSION.match(version)
    if m is None:
        return (2, 5, 1)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def _salvage_msh(raw: bytes) -> dict[int, str]:
    """MSH-3..11 of an unparseable message, best effort, for addressing the rejection."""
    start = raw.find(b"MSH")
    if start < 0:
        return {}
    line = re.split(rb"[\r\n]", raw[start:], maxsplit=1)[0].decode("latin-1")
    if len(line) < 4 or line[3] != "|":
        return {}
    parts = line.split("|")
    # Only plain printable text is copied back: the original may be broken in any way.
    return {n: re.sub(r"[^ -~]", "", parts[n - 1]) for n in range(3, min(len(parts) + 1, 12))}
