"""Source file names made safe to record and show: undecodable bytes and control characters escaped."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe_name(name: str) -> str:
    """The name as text DuckDB can store and terminals show as is.

    Names come from the file system as str with undecodable bytes smuggled in as surrogates (PEP 383);
    those become `\\xNN`, and control characters (an ANSI escape sequence in a name would recolour or
    rewrite a report viewed in a terminal) become `\\xNN` as well. A backslash stays itself: a name
    that already spells `\\xNN` is recorded the same, which is harmless for a label.
    """
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
