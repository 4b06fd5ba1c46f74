"""CDC CVX loader: the pipe-delimited cvx.txt (code|short|full name|note|status|id|nonvaccine|updated)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from terminology.loaders import Release, TerminologyLoadError, sha256_files

SYSTEM = "http://hl7.org/fhir/sid/cvx"
# CDC's VaccineStatus: "Inactive" vaccines are no longer available, "Never Active" were never marketed.
STATUS = {"active": "active", "pending": "active", "non-us": "active", "inactive": "inactive"}
STATUS["never active"] = "inactive"
_CODE = re.compile(r"\d{1,3}")


def read(path: Path) -> Release:
    if path.is_dir():
        hits = sorted(p for p in path.iterdir() if p.suffix.lower() == ".txt" and "cvx" in p.name.lower())
        if len(hits) != 1:
            raise TerminologyLoadError(path, None, "expected one cvx*.txt file in the folder")
        path = hits[0]
    release = Release(
        kind="cvx", system=SYSTEM, version="", source=str(path.resolve()), sha256=sha256_files([path])
    )
    dates: list[datetime] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="cp1252")  # CDC's download has been Windows-1252 at times
    seen: set[str] = set()
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        parts = [p.strip() for p in raw.split("|")]
        if line == 1 and parts[0].lower().startswith("cvx"):
            continue  # a header row
        if len(parts) < 5:
            raise TerminologyLoadError(path, line, f"{len(parts)} fields; the CVX layout has at least 5")
        code, short, full, _note, status = parts[:5]
        if not _CODE.fullmatch(code):
            raise TerminologyLoadError(path, line, f"CVX code {code!r} is not 1-3 digits")
        word = STATUS.get(status.lower())
        if word is None:
            raise TerminologyLoadError(path, line, f"unknown vaccine status {status!r}")
        if code in seen:
            raise TerminologyLoadError(path, line, f"CVX code {code} appears twice")
        seen.add(code)
        release.concepts.append((code, short or full or None, word, status))
        if full and full != short:
            release.designations.append((code, full, "full"))
        if len(parts) > 6 and parts[6]:
            release.properties.append((code, "nonvaccine", parts[6].lower()))
        if len(parts) > 7 and parts[7]:
            try:
                dates.append(datetime.strptime(parts[7], "%Y/%m/%d"))
            except ValueError:
                try:
                    dates.append(datetime.strptime(parts[7], "%m/%d/%Y"))
                except ValueError:
                    raise TerminologyLoadError(path, line, f"unreadable update date {parts[7]!r}") from None
    if not seen:
        raise TerminologyLoadError(path, None, "no CVX codes in the file")
    # CDC publishes no version number: the newest "last updated" date identifies the list.
    release.version = max(dates).strftime("%Y-%m-%d") if dates else f"sha256:{release.sha256[:12]}"
    return release
