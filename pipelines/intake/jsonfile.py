"""Opening a JSON source for streaming past a UTF-8 byte order mark, shared by detection and readers."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

UTF8_BOM = b"\xef\xbb\xbf"


def open_json(path: Path) -> BinaryIO:
    """Open for streaming JSON, past a UTF-8 byte order mark (Windows tools write one; parsers choke)."""
    fh = path.open("rb")
    if fh.read(3) != UTF8_BOM:
        fh.seek(0)
    return fh
