"""A fast, lazy HL7 v2 (ER7) tokenizer: segments split on parse, fields and components on first access.

Truncation (reason hl7_truncated) is decided from what a cut-off message looks like, since a missing
final terminator alone is normal for the last message of a file: a message that is only its MSH segment,
or one whose last line is an unterminated fragment of a segment id ("OB" where "OBX|..." was cut off).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipelines.convert.hl7v2.charset import NOT_TEXT, UNSUPPORTED, codec_for, normalise
from pipelines.convert.hl7v2.escape import unescape
from pipelines.intake.limits import limit

HL7_NULL = '""'

_BOM = b"\xef\xbb\xbf"
_JUNK = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_EOL = re.compile(r"\r\n|\r|\n")
_SEG_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_CUT_ID = re.compile(r"[A-Z][A-Z0-9]{0,2}")


class Hl7ParseError(Exception):
    """A message that cannot be tokenized: reason is a reason code, message holds no record values."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str
    component: str
    repetition: str
    escape: str | None
    subcomponent: str
    truncation: str | None


class _Ctx:
    """What every lazy part needs: the delimiters and the charset for \\X..\\ escapes."""

    __slots__ = ("comp", "esc", "rep", "sep", "sub", "unesc_args")

    def __init__(self, d: Delimiters, charset: str) -> None:
        self.sep = d.field
        self.comp = d.component
        self.rep = d.repetition
        self.sub = d.subcomponent
        self.esc = d.escape
        self.unesc_args = (
            d.escape,
            d.field,
            d.component,
            d.repetition,
            d.subcomponent,
            d.truncation,
            charset,
        )

    def text(self, s: str) -> str | None:
        if not s:
            return None
        if self.esc and self.esc in s:
            return unescape(s, *self.unesc_args) or None
        return s


class Repetition:
    """One repetition of a field."""

    __slots__ = ("_comps", "_ctx", "_literal", "_raw")

    def __init__(self, raw: str, ctx: _Ctx, literal: bool = False) -> None:
        self._raw = raw
        self._ctx = ctx
        self._literal = literal
        self._comps: list[str] | None = None

    def _split(self) -> list[str]:
        if self._comps is None:
            self._comps = [self._raw] if self._literal else self._raw.split(self._ctx.comp)
        return self._comps

    def component(self, i: int) -> str | None:
        comps = self._split()
        if i < 1 or i > len(comps):
            return None
        piece = comps[i - 1]
        if self._literal:
            return piece or None
        sub = self._ctx.sub
        if sub in piece:
            piece = piece.split(sub, 1)[0]
        return self._ctx.text(piece)

    def subcomponents(self, i: int) -> list[str | None]:
        comps = self._split()
        if i < 1 or i > len(comps) or not comps[i - 1]:
            return []
        if self._literal:
            return [comps[i - 1]]
        return [self._ctx.text(s) for s in comps[i - 1].split(self._ctx.sub)]

    @property
    def components(self) -> list[str | None]:
        """Each component's first subcomponent, unescaped (components[i - 1] == component(i))."""
        if not self._raw:
            return []
        return [self.component(i) for i in range(1, len(self._split()) + 1)]

    @property
    def component_count(self) -> int:
        return len(self._split()) if self._raw else 0

    @property
    def context(self) -> _Ctx:
        return self._ctx

    @property
    def raw(self) -> str:
        return self._raw

    def __repr__(self) -> str:
        return f"Repetition(<{len(self._raw)} chars>)"


class Field:
    """One field (all its repetitions); empty when the segment does not have it."""

    __slots__ = ("_ctx", "_literal", "_raw")

    def __init__(self, raw: str, ctx: _Ctx, literal: bool = False) -> None:
        self._raw = raw
        self._ctx = ctx
        self._literal = literal

    def __bool__(self) -> bool:
        return bool(self._raw)

    @property
    def repetitions(self) -> list[Repetition]:
        if not self._raw:
            return []
        if self._literal:
            return [Repetition(self._raw, self._ctx, True)]
        return [Repetition(r, self._ctx) for r in self._raw.split(self._ctx.rep)]

    def value(self, component: int = 1, subcomponent: int = 1) -> str | None:
        raw = self._raw
        if not raw:
            return None
        if self._literal:
            return raw if component == 1 and subcomponent == 1 else None
        return _pick(raw, self._ctx, 1, component, subcomponent)

    @property
    def raw(self) -> str:
        return self._raw

    def __repr__(self) -> str:
        return f"Field(<{len(self._raw)} chars>)"


def _pick(raw: str, ctx: _Ctx, repetition: int, component: int, subcomponent: int) -> str | None:
    s = raw
    for sep, index in ((ctx.rep, repetition), (ctx.comp, component), (ctx.sub, subcomponent)):
        if sep in s:
            parts = s.split(sep)
            if index > len(parts):
                return None
            s = parts[index - 1]
        elif index != 1:
            return None
    return ctx.text(s)


class Segment:
    """One segment; its fields are split on first access."""

    __slots__ = ("_ctx", "_parts", "_text", "memo", "name", "position")

    def __init__(self, name: str, position: int, text: str, ctx: _Ctx) -> None:
        self.name = name
        self.position = position
        self._text = text
        self._ctx = ctx
        self._parts: list[str] | None = None
        self.memo: dict[int, Any] | None = None  # what readers derived from a field, kept for reuse

    def _split(self) -> list[str]:
        parts = self._parts
        if parts is None:
            parts = self._parts = self._text.split(self._ctx.sep)
            if self.name == "MSH":
                # MSH-1 is the separator itself: a stand-in for it keeps parts[n] == field n.
                parts.insert(1, self._ctx.sep)
        return parts

    def field(self, n: int) -> Field:
        parts = self._split()
        if n < 1 or n >= len(parts):
            return Field("", self._ctx)
        return Field(parts[n], self._ctx, self.name == "MSH" and n <= 2)

    def get(self, n: int, component: int = 1, subcomponent: int = 1, repetition: int = 1) -> str | None:
        parts = self._split()
        if n < 1 or n >= len(parts):
            return None
        raw = parts[n]
        if not raw:
            return None
        if n <= 2 and self.name == "MSH":
            return raw if component == subcomponent == repetition == 1 else None
        return _pick(raw, self._ctx, repetition, component, subcomponent)

    @property
    def field_count(self) -> int:
        return len(self._split()) - 1

    @property
    def raw(self) -> str:
        """The segment's still-escaped text (wrapped lines joined with \\n)."""
        return self._text

    def __repr__(self) -> str:
        return f"Segment({self.name}, position={self.position})"


class Message:
    """A tokenized message; header values are read from MSH at parse time."""

    __slots__ = (
        "_index",
        "charset",
        "control_id",
        "delimiters",
        "message_code",
        "segments",
        "sending_application",
        "sending_facility",
        "structure",
        "timestamp",
        "trigger_event",
        "version",
    )

    def __init__(self, delimiters: Delimiters, segments: list[Segment], charset: str) -> None:
        self.delimiters = delimiters
        self.segments = segments
        self.charset = charset
        self._index: dict[str, list[Segment]] | None = None
        msh = segments[0]
        self.message_code = msh.get(9) or ""
        self.trigger_event = msh.get(9, 2)
        self.structure = msh.get(9, 3)
        self.control_id = msh.get(10)
        self.timestamp = msh.get(7)
        self.sending_application = msh.get(3)
        self.sending_facility = msh.get(4)
        self.version = msh.get(12)

    def _by_name(self) -> dict[str, list[Segment]]:
        index = self._index
        if index is None:
            index = self._index = {}
            for seg in self.segments:
                index.setdefault(seg.name, []).append(seg)
        return index

    def first(self, name: str) -> Segment | None:
        found = self._by_name().get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[Segment]:
        return list(self._by_name().get(name, ()))

    @property
    def type_label(self) -> str:
        """ "ORU^R01" style label (no record values) for messages and logs."""
        return f"{self.message_code}^{self.trigger_event}" if self.trigger_event else self.message_code

    def __repr__(self) -> str:
        return f"Message({self.type_label}, v{self.version}, {len(self.segments)} segments)"


def _is_delim(ch: str) -> bool:
    return len(ch) == 1 and "!" <= ch <= "~" and not ch.isalnum()


def _delimiters(head: str) -> Delimiters:
    """MSH-1 and MSH-2 from the MSH line (already known to start with "MSH")."""
    if len(head) < 4:
        raise Hl7ParseError("hl7_malformed_msh", "the MSH segment is too short")
    sep = head[3]
    if not _is_delim(sep):
        raise Hl7ParseError("hl7_bad_delimiters", "MSH-1 is not a usable field separator")
    end = head.find(sep, 4)
    enc = head[4:] if end < 0 else head[4:end]
    if len(enc) not in (3, 4, 5):
        raise Hl7ParseError(
            "hl7_bad_delimiters", f"MSH-2 has {len(enc)} encoding characters where 4 or 5 are expected"
        )
    if not all(_is_delim(c) for c in enc) or len(set(enc + sep)) != len(enc) + 1:
        raise Hl7ParseError("hl7_bad_delimiters", "MSH-1/MSH-2 delimiters are repeated or not usable")
    if len(enc) == 3:
        # Some old (v2.1/2.2) senders write "^~}" for "^~\}": no escape character, so no escapes.
        return Delimiters(sep, enc[0], enc[1], None, enc[2], None)
    return Delimiters(sep, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else None)


def _decode(data: bytes, declared: str | None, default_charset: str) -> tuple[str, str]:
    codec = codec_for(declared)
    if codec == UNSUPPORTED:
        raise Hl7ParseError(
            "hl7_invalid_encoding", "MSH-18 declares UTF-16/UTF-32, which cannot be read in 8-bit framing"
        )
    if codec == NOT_TEXT:
        raise Hl7ParseError(
            "hl7_unsupported_charset",
            "MSH-18 names a character set that is not an ASCII-compatible text encoding (EBCDIC, hex, ...)",
        )
    if data.isascii():
        return data.decode("ascii"), normalise(codec or "ascii")
    tried: list[str] = []
    # Declared first; then UTF-8 (valid multi-byte UTF-8 is rarely anything else), then the site default.
    for name in (codec, "utf-8", default_charset):
        if not name or name in tried:
            continue
        tried.append(name)
        try:
            return data.decode(name), normalise(name)
        except (UnicodeError, LookupError):  # idna and kin raise UnicodeError, not UnicodeDecodeError
            continue
    raise Hl7ParseError(
        "hl7_invalid_encoding",
        f"the bytes decode neither in the declared character set ({codec or 'none'}) nor in the fallbacks",
    )


def parse_message(raw: bytes, *, default_charset: str = "cp1252") -> Message:
    """Tokenize one message's bytes; raises Hl7ParseError with a reason code when it cannot."""
    data = raw
    if data[:3] == _BOM:
        data = data[3:]
    if data[:1].isspace():
        data = data.lstrip()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(data) > 1 and data[1] == 0 and data[0] != 0):
        raise Hl7ParseError("hl7_invalid_encoding", "the message is UTF-16/UTF-32 encoded")
    if data[:3] != b"MSH":
        raise Hl7ParseError("hl7_missing_msh", "the message does not start with an MSH segment")
    max_bytes = limit("hl7_max_message_bytes")
    if len(data) > max_bytes:
        raise Hl7ParseError("hl7_message_too_large", f"the message is larger than {max_bytes} bytes")
    junk = _JUNK.search(data)
    if junk is not None:
        raise Hl7ParseError("hl7_binary_junk", f"NUL or control byte at byte {junk.start()} of the message")

    nl = len(data)
    for t in (b"\r", b"\n"):
        i = data.find(t, 0, nl)
        if i >= 0:
            nl = i
    head = data[:nl].decode("latin-1")
    delims = _delimiters(head)
    head_parts = head.split(delims.field)
    declared = None
    if len(head_parts) > 17 and head_parts[17]:
        declared = head_parts[17].split(delims.repetition, 1)[0].split(delims.component, 1)[0].strip()

    text, charset = _decode(data, declared, default_charset)
    ctx = _Ctx(delims, charset)
    segments = _segments(text, delims.field, ctx)
    _check_bounds(segments, delims)
    msg = Message(delims, segments, charset)
    if len(head_parts) < 9 or not msg.message_code:
        raise Hl7ParseError("hl7_malformed_msh", "MSH-9 (message type) is empty or missing")
    if len(segments) == 1:
        raise Hl7ParseError("hl7_truncated", f"{msg.type_label} has only its MSH segment")
    return msg


def _check_bounds(segments: list[Segment], delims: Delimiters) -> None:
    """Segments, fields and repetitions within the documented bounds (schemas/input_limits.json).

    Counted with str.count on each segment's text, so a message past a bound costs one linear pass.
    """
    max_segments = limit("hl7_max_segments")
    if len(segments) > max_segments:
        raise Hl7ParseError("hl7_message_too_large", f"the message has more than {max_segments} segments")
    max_fields = limit("hl7_max_fields")
    max_reps = limit("hl7_max_repetitions")
    for seg in segments:
        text = seg.raw
        if text.count(delims.field) > max_fields:
            raise Hl7ParseError(
                "hl7_message_too_large", f"a {seg.name} segment has more than {max_fields} fields"
            )
        if text.count(delims.repetition) >= max_reps:
            for n, field in enumerate(text.split(delims.field)):
                if field.count(delims.repetition) >= max_reps:
                    name = f"{seg.name}-{n if seg.name != 'MSH' else n + 1}"
                    raise Hl7ParseError(
                        "hl7_message_too_large", f"{name} has more than {max_reps} repetitions"
                    )


def _segments(text: str, sep: str, ctx: _Ctx) -> list[Segment]:
    lines = _EOL.split(text) if "\n" in text else text.split("\r")
    # Each segment's lines are gathered and joined once: appending to a string per wrapped line would
    # copy the segment again for every line (quadratic in a message of many wrapped lines).
    out: list[list[str]] = []
    blanks = 0
    cut_tail = False
    for line in lines:
        if len(line) >= 3 and (len(line) == 3 or line[3] == sep) and _SEG_ID.match(line):
            out.append([line])
            blanks = 0
            cut_tail = False
        elif not line or line.isspace():
            blanks += 1
        else:
            # A line that does not start like a segment is text wrapped out of the previous one.
            out[-1].append("\n" * (blanks + 1) + line)
            blanks = 0
            cut_tail = _CUT_ID.fullmatch(line) is not None
    if cut_tail and not blanks and not text.endswith(("\r", "\n")):
        raise Hl7ParseError("hl7_truncated", "the message breaks off inside a segment id")
    joined = [parts[0] if len(parts) == 1 else "".join(parts) for parts in out]
    return [Segment(s[:3], i, s, ctx) for i, s in enumerate(joined)]
