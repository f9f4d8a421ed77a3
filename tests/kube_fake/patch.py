"""The PATCH bodies the fake understands.

- `application/merge-patch+json`: RFC 7386 JSON merge patch.
- `application/strategic-merge-patch+json` (kubectl apply, Helm upgrades of built-in kinds):
  a merge patch that also merges the common keyed lists (containers by name, ports, env,
  volumes, conditions...) and honours `$patch: delete`; other `$` directives are dropped.
  The real server knows each field's merge key from the Go types; the fake knows a few
  field names and replaces every other list whole.
- `application/json-patch+json`: RFC 6902 (add, remove, replace, move, copy, test).
- `application/apply-patch+yaml` (server-side apply) is a merge patch that may also create;
  the store handles that case.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PatchError", "json_patch", "merge_patch", "strategic_merge_patch"]


class PatchError(ValueError):
    """A patch that cannot be applied (answered with 422 Invalid or 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# List fields merged element by element, by this key (the first one the patch's items have).
_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "hostAliases": ("ip",),
    "ports": ("containerPort", "port"),
    "conditions": ("type",),
}


def _merge_key(field: str, items: list[Any]) -> str | None:
    for key in _MERGE_KEYS.get(field, ()):
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch, for the list fields in `_MERGE_KEYS`; see the module doc."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "delete":
        return None
    out = dict(target) if isinstance(target, dict) and patch.get("$patch") != "replace" else {}
    for field, value in patch.items():
        if field.startswith("$"):
            continue
        if value is None:
            out.pop(field, None)
        elif isinstance(value, list) and (key := _merge_key(field, value)):
            out[field] = _merge_list(out.get(field), value, key)
        else:
            merged = strategic_merge_patch(out.get(field), value)
            if merged is None:
                out.pop(field, None)
            else:
                out[field] = merged
    return out


def _merge_list(target: Any, patch: list[Any], key: str) -> list[Any]:
    items = [i for i in target if isinstance(i, dict)] if isinstance(target, list) else []
    for change in patch:
        i = next((n for n, item in enumerate(items) if item.get(key) == change[key]), None)
        merged = strategic_merge_patch(items[i] if i is not None else None, change)
        if i is None and merged is not None:
            items.append(merged)
        elif i is not None and merged is None:
            del items[i]
        elif i is not None:
            items[i] = merged
    return items


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise PatchError(f"path segment {part!r} not found") from exc
    return node


def _index(node: list[Any], part: str, *, insert: bool) -> int:
    if insert and part == "-":
        return len(node)
    try:
        i = int(part)
    except ValueError as exc:
        raise PatchError(f"bad array index {part!r}") from exc
    if not 0 <= i <= len(node) - (0 if insert else 1):
        raise PatchError(f"array index {i} out of range")
    return i


def _get(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return doc
    parent, last = _parent(doc, parts), parts[-1]
    if isinstance(parent, list):
        return parent[_index(parent, last, insert=False)]
    if not isinstance(parent, dict) or last not in parent:
        raise PatchError(f"path {'/'.join(parts)!r} not found")
    return parent[last]


def _remove(doc: Any, parts: list[str]) -> Any:
    parent, last = _parent(doc, parts), parts[-1]
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, insert=False))
    if not isinstance(parent, dict) or last not in parent:
        raise PatchError(f"path {'/'.join(parts)!r} not found")
    return parent.pop(last)


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent, last = _parent(doc, parts), parts[-1]
    if isinstance(parent, list):
        parent.insert(_index(parent, last, insert=True), value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"cannot add below a scalar at {'/'.join(parts)!r}")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 on a copy of `target`."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict):
            raise PatchError("each JSON patch operation must be an object")
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            if parts:
                _remove(doc, parts)  # fails when the path does not exist, as RFC 6902 wants
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _get(doc, parts) != op.get("value"):
                raise PatchError(f"test operation failed at {op.get('path')!r}")
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return doc
