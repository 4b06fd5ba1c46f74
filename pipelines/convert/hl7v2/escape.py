"""HL7 v2 escape sequences (\\F\\ \\S\\ \\X..\\ \\.br\\ ...) turned into plain text."""

from __future__ import annotations

import re
from functools import lru_cache

_FORMAT = re.compile(r"\.(sp|in|ti|sk|ce|fi|nf)\s*([+-]?\d+)?\s*$")


@lru_cache(maxsize=64)
def _pattern(esc: str) -> re.Pattern[str]:
    e = re.escape(esc)
    return re.compile(f"{e}([^{e}\r\n]*){e}")


def unescape(
    text: str,
    esc: str,
    field: str,
    component: str,
    repetition: str,
    subcomponent: str,
    truncation: str | None,
    charset: str,
) -> str:
    """Replace every escape sequence in text; unknown or broken sequences are kept as written."""
    if esc not in text:
        return text
    simple = {
        "F": field,
        "S": component,
        "T": subcomponent,
        "R": repetition,
        "E": esc,
        "P": truncation or "#",
        "H": "",  # start highlighting: plain text has none
        "N": "",  # normal text (end highlighting)
        ".br": "\n",
    }

    def repl(m: re.Match[str]) -> str:
        body = m.group(1)
        hit = simple.get(body)
        if hit is not None:
            return hit
        head = body[:1]
        if head == "X" or head == "x":
            return _hex(body[1:], charset) or m.group(0)
        if head == ".":
            out = _formatting(body)
            return m.group(0) if out is None else out
        # \Cxxyy\ \Mxxyyzz\ (character-set switches) and \Zxx\ (locally defined) are kept literally.
        return m.group(0)

    return _pattern(esc).sub(repl, text)


def _hex(digits: str, charset: str) -> str | None:
    if not digits or len(digits) % 2:
        return None
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


def _formatting(body: str) -> str | None:
    """Formatted-text (FT) commands rendered as plain text."""
    m = _FORMAT.match(body)
    if m is None:
        return None
    cmd, num = m.group(1), m.group(2)
    n = int(num) if num else 1
    if cmd == "sp":
        return "\n" * max(n, 1)  # end the line and skip n lines
    if cmd == "ce":
        return "\n"  # centring starts a new line
    if cmd == "sk":
        return " " * max(n, 0)  # skip n spaces to the right
    if cmd in ("in", "ti"):
        return " " * max(n, 0) if num else ""  # indents as spaces; negative undents vanish
    return ""  # .fi / .nf: fill modes, nothing to show
