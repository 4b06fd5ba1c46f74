"""Split an HL7 v2 file (plain, batched or MLLP-framed) into messages, envelopes and fragments, streaming."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK_SIZE = 1 << 20

MESSAGE = "hl7_message"
ENVELOPE = "hl7_batch_envelope"
FRAGMENT = "hl7_fragment"

_SB = 0x0B  # MLLP start block
_EB = 0x1C  # MLLP end block (followed by a carriage return)
_CR = 0x0D
_LF = 0x0A
_BOM = b"\xef\xbb\xbf"

_BREAK = re.compile(rb"[\r\n\x0b\x1c]")
_NON_WS = re.compile(rb"[^ \t\f\v\r\n]")
_SEG_ID = re.compile(rb"[A-Z][A-Z0-9]{2}")
# MSH-1 is any printable non-alphanumeric byte; what follows it must be the encoding characters and MSH-1
# again. Used to find a header that does not start its line ("[SOM]MSH|^~\&|..." from some spoolers).
_EMBEDDED_MSH = re.compile(rb"MSH([!-/:-@\[-`{-~])(?:(?!\1)[!-/:-@\[-`{-~]){3,5}\1")
# Bytes that make a non-segment line binary junk rather than wrapped text (tab and ESC are text).
_BINARY = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")
_ENVELOPES = (b"FHS", b"BHS", b"BTS", b"FTS")


@dataclass(frozen=True, slots=True)
class RawUnit:
    """One unit of an HL7 file: its 1-based position, kind, exact byte range in the file and bytes."""

    position: int
    kind: str
    byte_offset: int
    byte_length: int
    data: bytes


def iter_units(path: Path, chunk_size: int = CHUNK_SIZE) -> Iterator[RawUnit]:
    """Yield the file's units in order; memory holds one chunk plus the unit being read."""
    with open(path, "rb") as fh:
        yield from _Splitter(fh, chunk_size).units()


def _is_sep(b: int) -> bool:
    # A delimiter is printable and neither a letter, a digit nor a space.
    return 0x21 <= b <= 0x7E and not (0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A)


class _Splitter:
    """A line-driven state machine over a sliding buffer; offsets are file offsets."""

    def __init__(self, fh: BinaryIO, chunk_size: int) -> None:
        self.fh = fh
        self.chunk_size = chunk_size
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.kind: str | None = None  # the open unit's kind
        self.start = 0  # the open unit's first byte
        self.end = 0  # the open unit's end (past its last non-blank line and that line's terminator)
        self.sep = 0x7C  # the open message's field separator
        self.position = 0
        self.at_frame_start = True  # file start or just after an MLLP start block: a BOM may sit here

    def units(self) -> Iterator[RawUnit]:
        pos = 0  # index into buf of the next unread byte
        eof = False
        while True:
            buf = self.buf
            m = _BREAK.search(buf, pos)
            # A CR or an end block as the buffer's last byte may pair with the next byte (CRLF, FS CR).
            if m is None or (not eof and m.end() == len(buf) and buf[m.start()] in (_CR, _EB)):
                if eof:
                    if pos < len(buf):
                        yield from self._line(pos, len(buf), len(buf))
                    yield from self._close()
                    return
                pos = self._refill(pos)
                chunk = self.fh.read(self.chunk_size)
                if chunk:
                    self.buf += chunk
                else:
                    eof = True
                continue
            cut = m.start()
            c = buf[cut]
            if c in (_CR, _LF):
                nxt = cut + 1
                if c == _CR and nxt < len(buf) and buf[nxt] == _LF:
                    nxt += 1
                yield from self._line(pos, cut, nxt)
                pos = nxt
            else:
                # MLLP framing bytes end whatever is open; they belong to no unit.
                if pos < cut:
                    yield from self._line(pos, cut, cut)
                yield from self._close()
                pos = cut + 1
                if c == _EB and pos < len(buf) and buf[pos] == _CR:
                    pos += 1
                self.at_frame_start = c == _SB

    def _refill(self, pos: int) -> int:
        """Drop the bytes nobody needs any more; returns pos rebased."""
        keep = pos if self.kind is None else min(pos, self.start - self.base)
        if keep > 0:
            self.buf = self.buf[keep:]
            self.base += keep
            pos -= keep
        return pos

    def _emit(self, kind: str, start: int, end: int) -> RawUnit:
        self.position += 1
        data = self.buf[start - self.base : end - self.base]
        return RawUnit(self.position, kind, start, end - start, data)

    def _close(self) -> Iterator[RawUnit]:
        if self.kind is not None:
            kind, self.kind = self.kind, None
            yield self._emit(kind, self.start, self.end)

    def _open(self, kind: str, start: int, end: int) -> Iterator[RawUnit]:
        yield from self._close()
        self.kind, self.start, self.end = kind, start, end

    def _line(self, ls: int, le: int, te: int) -> Iterator[RawUnit]:
        """One line: buf[ls:le] is its content, buf[le:te] its terminator."""
        buf = self.buf
        first = self.at_frame_start
        self.at_frame_start = False
        w = _NON_WS.search(buf, ls, le)
        if w is None:
            return  # blank lines never open, extend or end a unit
        if first and buf.startswith(_BOM, ls):
            ls += 3
            w = _NON_WS.search(buf, ls, le)
            if w is None:
                return
        base = self.base
        ws = w.start()
        head = buf[ws : ws + 4]
        # Headers may be indented; ordinary segments must start the line.
        is_msh = head[:3] == b"MSH" and (len(head) == 3 or _is_sep(head[3]))
        if is_msh and (ws == ls or self.kind != MESSAGE):
            yield from self._open(MESSAGE, base + ws, base + te)
            self.sep = head[3] if len(head) == 4 else 0x7C
            return
        if head[:3] in _ENVELOPES and (len(head) == 3 or _is_sep(head[3])):
            yield from self._close()
            self.position += 1
            yield RawUnit(self.position, ENVELOPE, base + ws, te - ws, buf[ws:te])
            return
        if (
            self.kind == MESSAGE
            and ws == ls
            and buf[ls + 3 : ls + 4] == bytes((self.sep,))
            and _SEG_ID.match(buf, ls, le)
        ):
            self.end = base + te
            return
        if self.kind == MESSAGE and le - ls == 3 and _SEG_ID.match(buf, ls, le):
            self.end = base + te  # a segment with no fields at all
            return
        # Not a segment start: wrapped text, junk, or a header that does not start its line.
        emb = _EMBEDDED_MSH.search(buf, ws, le)
        if emb is not None:
            ms = emb.start()
            if ms > ws:
                # The prefix ("[SOM]", a spooler's banner) belongs with no message.
                if self.kind == FRAGMENT:
                    self.end = base + ms
                else:
                    yield from self._open(FRAGMENT, base + ws, base + ms)
            yield from self._open(MESSAGE, base + ms, base + te)
            self.sep = buf[ms + 3]
            return
        yield from self._fragment_or_continue(ws, le, te)

    def _fragment_or_continue(self, ws: int, le: int, te: int) -> Iterator[RawUnit]:
        base = self.base
        if self.kind == MESSAGE and _BINARY.search(self.buf, ws, le) is None:
            self.end = base + te  # text wrapped onto a new line (OBX-5 notes): part of the segment
        elif self.kind == FRAGMENT:
            self.end = base + te
        else:
            # Binary bytes after a message are not its text (NUL padding, a spliced-in blob): set apart.
            yield from self._open(FRAGMENT, base + ws, base + te)
