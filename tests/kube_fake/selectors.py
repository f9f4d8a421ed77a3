"""Label and field selectors, parsed the way the API server parses `?labelSelector=` and
`?fieldSelector=`.

Label selectors support equality (`a=b`, `a==b`, `a!=b`), existence (`a`, `!a`) and sets
(`a in (x,y)`, `a notin (x)`); terms are ANDed. Field selectors support `=`, `==` and `!=` on
any dotted path (`metadata.name`, `status.phase`); the real server only allows a few fields
per kind, the fake is more lenient.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["SelectorError", "make_filter", "parse_field_selector", "parse_label_selector"]

Obj = dict[str, Any]
Predicate = Callable[[Obj], bool]

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_EQUALITY = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^()]*)\)$")
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")


class SelectorError(ValueError):
    """A selector the server cannot parse (answered with 400 BadRequest)."""


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside `(...)`, as in `a in (x,y),b`."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t.strip() for t in terms if t.strip()]


def _label_term(term: str) -> Predicate:
    if m := _SET.match(term):
        key, op = m.group(1), m.group(2)
        values = {v.strip() for v in m.group(3).split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQUALITY.match(term):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS.match(term):
        negate, key = m.group(1) == "!", m.group(2)
        return lambda labels: (key in labels) != negate
    raise SelectorError(f"unable to parse requirement: {term!r}")


def parse_label_selector(text: str) -> Predicate:
    """Return a predicate over a label map; an empty selector matches everything."""
    terms = [_label_term(t) for t in _split_terms(text)]
    return lambda labels: all(t(labels) for t in terms)


def _field_value(obj: Obj, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def parse_field_selector(text: str) -> Predicate:
    """Return a predicate over a whole object."""
    checks: list[tuple[str, bool, str]] = []
    for term in _split_terms(text):
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", term)
        if not m:
            raise SelectorError(f"invalid selector: {term!r}; can't understand it")
        checks.append((m.group(1), m.group(2) != "!=", m.group(3)))
    return lambda obj: all((_field_value(obj, p) == v) == eq for p, eq, v in checks)


def make_filter(namespace: str | None, labels: str = "", fields: str = "") -> Predicate:
    """One predicate for a list or watch request: its namespace and both selectors."""
    label_ok = parse_label_selector(labels)
    field_ok = parse_field_selector(fields)

    def matches(obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        if namespace is not None and meta.get("namespace") != namespace:
            return False
        return label_ok(meta.get("labels") or {}) and field_ok(obj)

    return matches
