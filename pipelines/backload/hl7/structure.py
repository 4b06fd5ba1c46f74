"""The structural check of a built message, with rules compiled once per version from hl7apy's definitions:
segment order and groups, required fields, repetitions, lengths, and codes of HL7-defined (ID) tables."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from hl7apy import load_library

VERSIONS = ("2.3.1", "2.5.1")
# Table 0396 (coding systems) is open by design: local "99zzz" names and URIs are allowed there.
OPEN_TABLES = frozenset({"HL70396"})


@dataclass(frozen=True)
class Node:
    name: str
    segment: bool
    min: int
    max: int  # -1: unbounded
    children: tuple[Node, ...] = ()
    starts: frozenset[str] = frozenset()  # segment names a group can begin with


@dataclass(frozen=True)
class Leaf:
    max_len: int | None
    codes: frozenset[str] | None  # an HL7-defined table's codes
    table: str | None


@dataclass(frozen=True)
class FieldRule:
    number: int
    required: bool
    max_reps: int
    leaf: Leaf | None  # a primitive field
    components: tuple[Leaf | None, ...]  # a composite field's primitive components (None: composite)
    defined: bool = True  # False: the version reserves the number but defines no field there


@dataclass(frozen=True)
class Rules:
    version: str
    messages: dict[str, tuple[Node, ...]]
    segments: dict[str, tuple[FieldRule, ...]]


def _length(lib: Any, datatype: str | None) -> int | None:
    cls = getattr(lib, datatype, None) if datatype else None
    found = None
    for sample in ("1", 1):
        try:
            found = getattr(cls(sample), "max_length", None) if cls else None
            break
        except Exception:  # noqa: S112 - hl7apy raises its own errors for a sample a type refuses
            continue
    return found


@cache
def rules(version: str) -> Rules:
    """Compile the version's definitions (once per process) into plain tuples the check walks quickly."""
    if version not in VERSIONS:
        raise ValueError(f"HL7 version {version} is not supported (supported: {', '.join(VERSIONS)})")
    lib = load_library(version)
    lengths: dict[str | None, int | None] = {}

    def leaf(datatype: str | None, table: str | None) -> Leaf:
        if datatype not in lengths:
            lengths[datatype] = _length(lib, datatype)
        codes = None
        if datatype == "ID" and table and table not in OPEN_TABLES and table in lib.TABLES:
            codes = frozenset(lib.TABLES[table][1])
        return Leaf(lengths[datatype], codes, table if codes else None)

    segments: dict[str, tuple[FieldRule, ...]] = {}
    for seg_name, (_kind, fields) in lib.SEGMENTS.items():
        if len(seg_name) != 3:  # hl7apy's ANYHL7SEGMENT placeholder
            continue
        out = []
        for fname, fdef, (lo, hi), _tag in fields:
            number = int(fname.rsplit("_", 1)[1])
            if fdef[0] == "leaf":
                out.append(FieldRule(number, lo >= 1, hi, leaf(fdef[2], fdef[4]), (), fdef[2] is not None))
            else:
                comps = tuple(leaf(c[1][2], c[1][4]) if c[1][0] == "leaf" else None for c in fdef[1])
                out.append(FieldRule(number, lo >= 1, hi, None, comps))
        segments[seg_name] = tuple(out)

    def node(name: str, definition: Any, lo: int, hi: int, tag: str) -> Node:
        if tag == "SEG":
            return Node(name, True, lo, hi)
        children = tuple(node(n, d, a, b, t) for n, d, (a, b), t in definition[1])
        starts: set[str] = set()
        for c in children:
            starts |= {c.name} if c.segment else set(c.starts)
            if c.min >= 1:
                break
        return Node(name, False, lo, hi, children, frozenset(starts))

    messages = {
        name: tuple(node(n, d, a, b, t) for n, d, (a, b), t in definition[1])
        for name, definition in lib.MESSAGES.items()
    }
    return Rules(version, messages, segments)


def check(message: str, structure: str, version: str) -> list[str]:
    """Findings for one built message (segment and field names, never values); empty when it conforms."""
    return check_segments([s for s in message.split("\r") if s], structure, version)


def check_segments(lines: list[str], structure: str, version: str) -> list[str]:
    """check() of a message given as its segments (none empty), as the builders have them: a patient's
    PID and a kind's MSH are then the same string objects message after message, their hashes known."""
    r = rules(version)
    grammar = r.messages.get(structure)
    if grammar is None:
        return [f"no message structure {structure} in {version}"]
    names = [s[:3] for s in lines]
    findings = list(_order(version, structure, tuple(names)))
    memo = _memo.setdefault(version, {})
    for line, name in zip(lines, names, strict=True):
        if len(line) > _MEMO_LONGEST:  # a document's content: never met again, and costly to hash and keep
            findings.extend(_fields(line, name, version))
            continue
        found = memo.get(line)
        if found is None:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            found = memo[line] = tuple(_fields(line, name, version))
        findings.extend(found)
    return findings


@cache
def control_id_fits(version: str) -> bool:
    """Whether MSH-10 takes any control id ehrlift makes (20 characters) in this version."""
    rule = next((f for f in rules(version).segments["MSH"] if f.number == 10), None)
    return rule is not None and rule.leaf is not None and (rule.leaf.max_len or 20) >= 20


@lru_cache(maxsize=4096)  # messages of one kind come in a few shapes
def _order(version: str, structure: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """Findings about the segments' order and groups (the shape alone decides them)."""
    findings: list[str] = []
    end = _match(rules(version).messages[structure], list(names), 0, findings)
    if end < len(names):
        findings.append(f"segment {names[end]} (#{end + 1}) is not allowed there in {structure}")
    return tuple(findings)


# Findings per segment text: a patient's PID and PV1 recur in every message of theirs.
_memo: dict[str, dict[str, tuple[str, ...]]] = {}
_MEMO_SIZE = 50_000
_MEMO_LONGEST = 2_000  # characters: a longer segment or field is checked without being remembered


def _match(nodes: tuple[Node, ...], names: list[str], i: int, findings: list[str]) -> int:
    for n in nodes:
        count = 0
        while n.max < 0 or count < n.max:
            if i >= len(names):
                break
            if n.segment:
                if names[i] != n.name:
                    break
                i += 1
            else:
                if names[i] not in n.starts:
                    break
                j = _match(n.children, names, i, findings)
                if j == i:
                    break
                i = j
            count += 1
        if count < n.min:
            findings.append(f"required {'segment' if n.segment else 'group'} {n.name} is missing")
    return i


@cache
def _compiled(version: str, name: str) -> tuple[tuple[int, ...], tuple[Any, ...]] | None:
    """(required field numbers, per field number: None or (rule, [(component, leaf)] to check))."""
    seg_rules = rules(version).segments.get(name)
    if seg_rules is None:
        return None
    by_number: list[Any] = [None] * (max((f.number for f in seg_rules), default=0) + 1)
    for f in seg_rules:
        comps = tuple(
            (k, c)
            for k, c in enumerate(f.components, start=1)
            if c is not None and (c.max_len is not None or c.codes is not None)
        )
        by_number[f.number] = (f, comps)
    return tuple(f.number for f in seg_rules if f.required), tuple(by_number)


def _fields(line: str, name: str, version: str) -> list[str]:
    compiled = _compiled(version, name)
    if compiled is None:
        return [f"unknown segment {name}"]
    required, by_number = compiled
    parts = line.split("|")
    if name == "MSH":  # MSH-1 is the field separator itself: MSH-2 is parts[1]
        parts = ["MSH", "|", *parts[1:]]
    n_parts, n_rules = len(parts), len(by_number)
    findings = [f"{name}-{n} is required" for n in required if n >= n_parts or not parts[n]]
    if n_parts > n_rules:
        findings.append(f"{name} has {n_parts - 1} fields (at most {n_rules - 1})")
    first = 3 if name == "MSH" else 1
    memos = _field_memos(version, name)
    for number, raw in enumerate(parts[first:n_rules], start=first):
        if not raw:
            continue
        if len(raw) > _MEMO_LONGEST:
            once = _field(name, number, raw, *by_number[number])
            if once:
                findings.extend(once)
            continue
        memo = memos[number]
        found = memo.get(raw)
        if found is None:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            found = memo[raw] = _field(name, number, raw, *by_number[number])
        if found:
            findings.extend(found)
    return findings


@cache
def _field_memos(version: str, name: str) -> list[dict[str, tuple[str, ...]]]:
    """Findings per field value, per field number: codes, units and statuses recur message after message."""
    compiled = _compiled(version, name)
    return [{} for _ in compiled[1]] if compiled else []


def _field(name: str, number: int, raw: str, rule: FieldRule, comps: tuple[Any, ...]) -> tuple[str, ...]:
    if not rule.defined:
        return (f"{name}-{number} is not defined in this version",)
    findings = []
    reps = raw.split("~") if "~" in raw else (raw,)
    if 0 < rule.max_reps < len(reps):
        findings.append(f"{name}-{number} repeats {len(reps)} times (at most {rule.max_reps})")
    leaf = rule.leaf
    for rep in reps:
        if leaf is not None:
            if leaf.max_len is not None or leaf.codes is not None:
                problem = _leaf(rep, leaf)
                if problem:
                    findings.append(f"{name}-{number} {problem}")
            continue
        if not comps and "^" not in rep:
            continue
        values = rep.split("^")
        n_values = len(values)
        if n_values > len(rule.components):
            findings.append(f"{name}-{number} has {n_values} components (at most {len(rule.components)})")
        for k, spec in comps:
            if k > n_values:
                break
            value = values[k - 1]
            if value:
                problem = _leaf(value, spec)
                if problem:
                    findings.append(f"{name}-{number}.{k} {problem}")
    return tuple(findings)


def _leaf(value: str, spec: Leaf) -> str | None:
    if spec.max_len is None and spec.codes is None:
        return None
    if spec.max_len is not None and len(value) > spec.max_len:
        return f"is longer than {spec.max_len}"
    if spec.codes is not None and value not in spec.codes:
        return f"is not a code of table {spec.table[3:] if spec.table else ''}"
    return None
