"""FHIR R4 ConceptMap JSON loader: each group's element → target pairs into terminology.maps."""

from __future__ import annotations

from pathlib import Path

from terminology.loaders import Release, TerminologyLoadError, sha256_files
from terminology.loaders.codesystem import read_json_resource

# R4 ConceptMapEquivalence codes; "unmatched" and "disjoint" state that there is no map.
EQUIVALENCES = {
    "relatedto",
    "equivalent",
    "equal",
    "wider",
    "subsumes",
    "narrower",
    "specializes",
    "inexact",
    "unmatched",
    "disjoint",
}


def read(path: Path) -> Release:
    cm = read_json_resource(path, "ConceptMap")
    url = cm.get("url")
    if not url:
        raise TerminologyLoadError(path, None, "the ConceptMap has no url")
    version = cm.get("version") or "unversioned"
    release = Release(
        kind="conceptmap",
        system=url,
        version=version,
        source=str(path.resolve()),
        sha256=sha256_files([path]),
    )
    release.map_name = url
    author = cm.get("publisher")  # who reviewed it, and when, a ConceptMap does not say
    for gi, group in enumerate(cm.get("group") or [], start=1):
        source, target = group.get("source"), group.get("target")
        if not source or not target:
            raise TerminologyLoadError(path, None, f"group {gi} lacks source or target system")
        for element in group.get("element") or []:
            code = element.get("code")
            if not code:
                raise TerminologyLoadError(path, None, f"group {gi} has an element without a code")
            for t in element.get("target") or []:
                equivalence = t.get("equivalence")
                if equivalence not in EQUIVALENCES:
                    raise TerminologyLoadError(
                        path,
                        None,
                        f"group {gi} element {code}: equivalence {equivalence!r} is not an R4 code",
                    )
                if not t.get("code"):
                    continue  # "unmatched" without a target says only that no map exists
                pair = (source, code, element.get("display"), target, t["code"], t.get("display"))
                release.maps.append((*pair, equivalence, author, None, None))
    if not release.maps:
        raise TerminologyLoadError(path, None, "the ConceptMap maps no codes")
    return release
