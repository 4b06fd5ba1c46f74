"""MSH-18 character-set names (and the usual sender misspellings) mapped to Python codecs."""

from __future__ import annotations

import codecs
import re

UNSUPPORTED = "unsupported"
NOT_TEXT = "not-text"  # EBCDIC, bytes-to-bytes codecs (hex, base64), str-to-str (rot13), idna
# What every usable charset must decode unchanged: the MSH segment is told apart in ASCII before decoding.
_ASCII_PROBE = bytes(range(0x20, 0x7F)) + b"\r\n\t"
# Codecs that pass the probe yet are no character set: they transform text (escapes, host names).
_TRANSFORMS = frozenset({"idna", "punycode", "raw-unicode-escape", "unicode-escape"})

# HL7 table 0211 plus what senders write instead. Keys are normalised by _key().
_TABLE = {
    "ASCII": "ascii",
    "USASCII": "ascii",
    "ISOIR6": "ascii",
    "ANSIX3.4": "ascii",
    "88591": "latin-1",
    "ISO88591": "latin-1",
    "LATIN1": "latin-1",
    "ISOIR100": "latin-1",
    "885915": "iso8859-15",
    "ISO885915": "iso8859-15",
    "LATIN9": "iso8859-15",
    "UNICODEUTF8": "utf-8",
    "UTF8": "utf-8",
    "ISOIR192": "utf-8",
    # v2.3 defined a bare "UNICODE"; in 8-bit framing senders mean UTF-8 by it.
    "UNICODE": "utf-8",
    "UNICODEUTF16": UNSUPPORTED,
    "UTF16": UNSUPPORTED,
    "UNICODEUTF32": UNSUPPORTED,
    "UTF32": UNSUPPORTED,
    "UCS2": UNSUPPORTED,
    "WINDOWS1252": "cp1252",
    "CP1252": "cp1252",
    "ISOIR87": "iso2022_jp",
    "ISOIR159": "iso2022_jp_2",
    "JAS2020": "shift_jis",
    "JISX0202": "iso2022_jp",
    "GB180302000": "gb18030",
    "GB18030": "gb18030",
    "KSX1001": "euc_kr",
    "CNS116431992": "big5",
    "BIG5": "big5",
}
for _n in range(2, 10):
    _TABLE[f"8859{_n}"] = _TABLE[f"ISO8859{_n}"] = f"iso8859-{_n}"

_STRIP = re.compile(r"[\s_\-/]")


def _key(name: str) -> str:
    return _STRIP.sub("", name.upper())


def codec_for(name: str | None) -> str | None:
    """The Python codec for an MSH-18 value; None when absent or unknown, UNSUPPORTED for UTF-16/32."""
    if not name:
        return None
    hit = _TABLE.get(_key(name))
    if hit is not None:
        return hit
    try:
        # Some senders write a Python/IANA name outright ("windows-1250", "iso-8859-2").
        info = codecs.lookup(name.strip())
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        return None
    if info.name.startswith(("utf-16", "utf-32")):
        return UNSUPPORTED
    if not _ascii_compatible(info.name):
        return NOT_TEXT
    if info.name == "utf-8-sig":
        return "utf-8"  # an ACK written in utf-8-sig would open with a byte order mark before MSH
    return info.name


def _ascii_compatible(codec: str) -> bool:
    """A text codec that reads ASCII bytes as ASCII (EBCDIC code pages and codecs like hex do not)."""
    if codec in _TRANSFORMS or not getattr(codecs.lookup(codec), "_is_text_encoding", True):
        return False
    try:
        return _ASCII_PROBE.decode(codec) == _ASCII_PROBE.decode("ascii")
    except (UnicodeError, LookupError, TypeError, ValueError):
        return False


def normalise(codec: str) -> str:
    """A codec's canonical Python name, so Message.charset compares predictably."""
    try:
        return codecs.lookup(codec).name
    except LookupError:
        return codec
