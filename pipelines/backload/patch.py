"""JSON Patch (RFC 6902) for a changed resource, from only the operations the target documents."""

from __future__ import annotations

from typing import Any

IGNORED = ("resourceType", "id")


def patch_kinds(operations: tuple[tuple[str, str], ...]) -> dict[str, dict[str, Any]]:
    """Per top-level element, how the documented operations can change it: whole (replace /E), list (add
    /E/- and remove /E/{index}), item fields (replace /E/{index}/f) or object fields (replace /E/f)."""
    out: dict[str, dict[str, Any]] = {}
    for op, path in operations:
        parts = path.strip("/").split("/")
        k = out.setdefault(
            parts[0], {"whole": False, "add": False, "remove": False, "items": set(), "fields": set()}
        )
        if len(parts) == 1 and op == "replace":
            k["whole"] = True
        elif parts[1:] == ["-"] and op == "add":
            k["add"] = True
        elif parts[1:] == ["{index}"] and op == "remove":
            k["remove"] = True
        elif len(parts) == 3 and parts[1] == "{index}" and op == "replace":
            k["items"].add(parts[2])
        elif len(parts) == 2 and op == "replace":
            k["fields"].add(parts[1])
    return out


def changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if k not in IGNORED and old.get(k) != new.get(k))


def not_patchable(
    old: dict[str, Any], new: dict[str, Any], operations: tuple[tuple[str, str], ...]
) -> list[str]:
    """The changed elements no documented operation can express (element names, never values)."""
    kinds = patch_kinds(operations)
    refused = []
    for e in changed(old, new):
        k = kinds.get(e)
        if k is None or not _expressible(k, old.get(e), new.get(e)):
            refused.append(e)
    return refused


def only_added(before: Any, after: Any) -> bool:
    """A list change that only appends items (what `add /E/-` expresses, whether or not E exists yet)."""
    before, after = before or [], after or []
    return isinstance(before, list) and isinstance(after, list) and all(x in after for x in before)


def _as_list(k: dict[str, Any], before: Any, after: Any) -> bool:
    return k["add"] and (k["remove"] or only_added(before, after))


def _expressible(k: dict[str, Any], before: Any, after: Any) -> bool:
    if _as_list(k, before, after):
        return isinstance(before or [], list) and isinstance(after or [], list)
    if after is None:
        return False  # no documented remove of the whole element
    if k["whole"]:
        return True
    if k["items"]:
        if not isinstance(before, list) or not isinstance(after, list) or len(before) != len(after):
            return False
        return all(_fields_ok(k["items"], b, a) for b, a in zip(before, after, strict=True))
    if k["fields"]:
        return isinstance(before, dict) and isinstance(after, dict) and _fields_ok(k["fields"], before, after)
    return False


def _fields_ok(fields: set[str], before: Any, after: Any) -> bool:
    if not isinstance(before, dict) or not isinstance(after, dict):
        return False
    diff = [f for f in set(before) | set(after) if before.get(f) != after.get(f)]
    # replace needs the member on the server already (RFC 6902 4.3) and there is no documented remove
    return all(f in fields and f in before and f in after for f in diff)


def _matches(server_item: Any, ours: Any) -> bool:
    """The server's item is ours when it has every member we sent (it may add its own, such as an id)."""
    if isinstance(server_item, dict) and isinstance(ours, dict):
        return all(server_item.get(k) == v for k, v in ours.items())
    return server_item == ours


def operations_for(
    old: dict[str, Any], new: dict[str, Any], server: dict[str, Any], operations: tuple[tuple[str, str], ...]
) -> list[dict[str, Any]]:
    """The JSON Patch turning what we sent before (old) into new on the server's current copy: list items are
    located on the server (removing only what we sent, never what the EHR added), the rest replaced."""
    kinds = patch_kinds(operations)
    ops: list[dict[str, Any]] = []
    for e in changed(old, new):
        k = kinds[e]
        before, after, current = old.get(e), new.get(e), server.get(e)
        if _as_list(k, before, after):
            before, after, current = before or [], after or [], current or []
            gone = [x for x in before if x not in after]
            drop = sorted(
                (
                    i
                    for i, s in enumerate(current)
                    if any(_matches(s, g) for g in gone) and not any(_matches(s, a) for a in after)
                ),
                reverse=True,  # highest index first, so earlier indexes stay valid
            )
            ops += [{"op": "remove", "path": f"/{e}/{i}"} for i in drop]
            ops += [
                {"op": "add", "path": f"/{e}/-", "value": x}
                for x in after
                if x not in before and not any(_matches(s, x) for s in current)
            ]
        elif k["whole"]:
            ops.append({"op": "replace", "path": f"/{e}", "value": after})
        elif k["items"]:
            for i, (b, a) in enumerate(zip(before, after, strict=True)):
                j = next((n for n, s in enumerate(current or []) if _matches(s, b)), i)
                ops += [
                    {"op": "replace", "path": f"/{e}/{j}/{f}", "value": a[f]}
                    for f in sorted(a)
                    if a.get(f) != b.get(f)
                ]
        else:
            ops += [
                {"op": "replace", "path": f"/{e}/{f}", "value": after[f]}
                for f in sorted(after)
                if after.get(f) != before.get(f)
            ]
    return ops
