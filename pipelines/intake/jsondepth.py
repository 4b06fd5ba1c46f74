"""JSON nesting bounded before objects are built: a depth check on bytes and bounded ijson streams.

A few hundred kilobytes of `[[[[...` nested 100,000 deep drive recursive parsers into RecursionError and
ijson's prefixed events into gigabytes (each event carries its whole path). Lines and documents are
measured on their bytes first, and Bundles are streamed from ijson's prefix-free events with the path
kept here, only ever as deep as the bound.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import ijson
import orjson

from pipelines.intake.limits import limit

REASON = "json_too_deep"
TOO_DEEP = "too_deep"  # the event a bounded stream yields once for each subtree past the bound
_STRING_B = re.compile(rb'"(?:[^"\\]|\\.)*"')
_STRING_S = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET_B = re.compile(rb"[^\[\]{}]+")
_NOT_BRACKET_S = re.compile(r"[^\[\]{}]+")
_STARTS = frozenset(("start_map", "start_array"))
_ENDS = frozenset(("end_map", "end_array"))


class TooDeep:
    """Stands for a streamed item whose nesting passed the bound (it was never built)."""

    __slots__ = ()


TOO_DEEP_ITEM = TooDeep()
DUPLICATE = "json_duplicate_key"
DUPLICATE_MESSAGE = "a member name appears twice in one object of the resource"


class RepeatedNames:
    """An object_pairs_hook noting whether any object, at any depth, repeats a member name.

    JSON parsers keep one value (the last) of a repeated name; which one the sender meant is unknown,
    whether the name is the resource's own or a Coding's deep inside it.
    """

    def __init__(self) -> None:
        self.repeated = False

    def __call__(self, pairs: list) -> dict:
        out = dict(pairs)
        if len(out) < len(pairs):
            self.repeated = True
        return out


def repeats(text: str) -> bool:
    """Does any object of this JSON text, at any depth, name a member twice? False when it does not parse
    (the caller's other checks name that).

    The fast parse keeps one value per name, so when it serializes back to the very same bytes nothing
    was dropped: a compact line (as bulk exports write them) costs a parse and a dump. Any other text is
    parsed again with a hook that sees every object's member list.
    """
    try:
        if orjson.dumps(orjson.loads(text)) == text.encode():
            return False
    except orjson.JSONDecodeError:
        pass  # broken, or JSON orjson refuses (an integer past 64 bits): the exact parse decides
    hook = RepeatedNames()
    try:
        json.loads(text, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return False
    return hook.repeated


def max_depth() -> int:
    return limit("json_max_depth")


def message(bound: int | None = None) -> str:
    return f"JSON nests deeper than {bound or max_depth()} levels"


def exceeds(text: bytes | str, bound: int | None = None) -> bool:
    """True when the JSON text nests objects/arrays deeper than bound (strings are not counted)."""
    bound = bound or max_depth()
    if isinstance(text, bytes):
        if text.count(b"{") + text.count(b"[") <= bound:
            return False  # the common case: too few brackets to nest that deep
        brackets = _NOT_BRACKET_B.sub(b"", _STRING_B.sub(b"", text)).decode("ascii")
    else:
        if text.count("{") + text.count("[") <= bound:
            return False
        brackets = _NOT_BRACKET_S.sub("", _STRING_S.sub("", text))
    depth = 0
    for ch in brackets:
        if ch in "{[":
            depth += 1
            if depth > bound:
                return True
        else:
            depth -= 1
    return False


def parse(fh: BinaryIO, bound: int | None = None) -> Iterator[tuple[str, str, Any]]:
    """ijson.parse's (prefix, event, value), but a subtree past bound is one (prefix, TOO_DEEP, None)."""
    bound = bound or max_depth()
    path: list[str] = []
    prefixes = [""]  # prefixes[i]: the joined path of the first i levels
    skipping = 0
    for event, value in ijson.basic_parse(fh, use_float=False):
        if skipping:
            if event in _STARTS:
                skipping += 1
            elif event in _ENDS:
                skipping -= 1
            continue
        if event == "map_key":
            path[-1] = value
            prefixes[-1] = f"{prefixes[-2]}.{value}" if len(prefixes) > 2 else value
            yield prefixes[-2], event, value
        elif event in _STARTS:
            if len(path) >= bound:
                skipping = 1
                yield prefixes[-1], TOO_DEEP, None
                continue
            yield prefixes[-1], event, value
            if event == "start_array":
                path.append("item")
                prefixes.append(f"{prefixes[-1]}.item" if prefixes[-1] else "item")
            else:
                path.append("")
                prefixes.append(prefixes[-1])
        elif event in _ENDS:
            path.pop()
            prefixes.pop()
            yield prefixes[-1], event, value
        else:
            yield prefixes[-1], event, value


def items(fh: BinaryIO, prefix: str, bound: int | None = None) -> Iterator[Any]:
    """ijson.items(fh, prefix, use_float=False), yielding TOO_DEEP_ITEM for an item past the bound."""
    events = parse(fh, bound)
    for current, event, value in events:
        if current != prefix or event in _ENDS or event == "map_key":
            continue
        if event == TOO_DEEP:
            yield TOO_DEEP_ITEM
        elif event in _STARTS:
            yield _build(event, value, events)
        else:
            yield value


class _Repeated:
    """Stands for a streamed item whose own or whose resource's members repeat a name (never built)."""

    __slots__ = ()


REPEATED_ITEM = _Repeated()


def _build(event: str, value: Any, events: Iterator[tuple[str, str, Any]]) -> Any:
    builder = ijson.ObjectBuilder()
    builder.event(event, value)
    depth = 1
    deep = repeated = False
    # Member names of each open object, at every depth (None for an open array).
    names: list[set[str] | None] = [set() if event == "start_map" else None]
    for _, event, value in events:
        if event == TOO_DEEP:
            deep = True
            continue
        if event in _STARTS:
            depth += 1
            names.append(set() if event == "start_map" else None)
        elif event in _ENDS:
            depth -= 1
            names.pop()
        elif event == "map_key":
            seen = names[-1]
            if seen is not None:
                if value in seen:
                    repeated = True
                seen.add(value)
        if not deep:
            builder.event(event, value)
        if depth == 0:
            break
    if deep:
        return TOO_DEEP_ITEM
    return REPEATED_ITEM if repeated else builder.value
