"""Refusing regular expressions that a crafted prompt could make run for seconds.

Python's ``re`` backtracks and has no timeout, and model-selection rules search text a
client wrote: ``(a+)+b`` takes seconds on 24 characters, and even ``\\w+\\w+x`` takes
nine seconds on 2,048 (measured here, Python 3.11). Rules read a bounded text (their
``maxTextChars``), so a pattern is accepted only when a bound on its backtracking over
a text of that length stays under :data:`MAX_STEPS`:

- a search tries every start position: ``n``;
- from one start, a sequence costs the product of its items, an alternation the sum of
  its branches, a repeat ``{min,max}`` of a single-step item ``min(max, n) + 1`` (the
  lengths it may try), and literals, classes and anchors 1;
- a repeat of more than one whose body itself repeats or alternates is refused outright
  (the classic exponential cases), and so are backreferences (no bound at all).

At the default 1,024 characters one unbounded repeat fits, with one optional
item (``\\bdef\\s?\\w+\\(``); two unbounded repeats do not (``\\w+\\s+\\w+``): write
keywords, or bound the repeats (``\\s{1,4}\\w{1,32}``). The bound is coarse (it ignores that a
literal prefix rules out most start positions); what it admits costs at most about
30 ms on the worst text a client can craft (``\\w+\\s?x`` on 1,024 letters: 22 ms
here), against seconds for what it refuses.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MAX_STEPS", "check_pattern"]

# A backtracking step of sre took about 8 ns here (2-core development machine).
MAX_STEPS = 1 << 22

# The parser of the re module (what re.compile runs first). Private, but stable since
# Python 3.11 (sre_parse before it, now deprecated); it gives the pattern's tree.
_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")
_REPEATS = {_constants.MAX_REPEAT, _constants.MIN_REPEAT}
if hasattr(_constants, "POSSESSIVE_REPEAT"):  # Python 3.11+
    _REPEATS.add(_constants.POSSESSIVE_REPEAT)
_BACKREFS = {_constants.GROUPREF, _constants.GROUPREF_EXISTS}
_LOOKAROUNDS = {_constants.ASSERT, _constants.ASSERT_NOT}
_ATOMIC = getattr(_constants, "ATOMIC_GROUP", None)  # (?>...), Python 3.11+


class _Refused(ValueError):
    pass


def check_pattern(pattern: str, text_chars: int) -> None:
    """Raise ``ValueError`` (saying why) when ``pattern`` could backtrack past
    :data:`MAX_STEPS` on a text of ``text_chars`` characters; the pattern must compile."""
    tree = _parser.parse(pattern)
    n = max(text_chars, 1)
    cost = _sequence_cost(tree, n)
    if n * cost > MAX_STEPS:
        raise ValueError(
            f"could backtrack ~{n * cost:.2g} steps on a crafted {text_chars}-character "
            f"message (limit {MAX_STEPS:.2g}): use keywords, fewer unbounded repeats "
            "(*, +), or bounded ones ({1,4}); or lower maxTextChars"
        )


def _sequence_cost(items: Any, n: int) -> int:
    cost = 1
    for op, argument in items:
        cost *= _item_cost(op, argument, n)
        if cost > MAX_STEPS:
            return cost  # already refused; stop before the numbers grow huge
    return cost


def _item_cost(op: Any, argument: Any, n: int) -> int:
    if op in _BACKREFS:
        raise ValueError("backreferences are not allowed (their backtracking has no bound)")
    if op in _REPEATS:
        _low, high, body = argument
        if high > 1 and _repeats_or_alternates(body):
            raise ValueError(
                "a repeated group that itself repeats or alternates ((a+)+, (a|b)*) can "
                "backtrack exponentially: use keywords or a flat pattern"
            )
        lengths: int = min(high, n) + 1
        return lengths * _sequence_cost(body, n)
    if op is _constants.BRANCH:
        branches: list[Any] = argument[1]
        return sum(_sequence_cost(branch, n) for branch in branches)
    if op is _constants.SUBPATTERN:
        return _sequence_cost(argument[-1], n)
    if op in _LOOKAROUNDS:
        return _sequence_cost(argument[1], n)
    if op is _ATOMIC:
        return _sequence_cost(argument, n)
    return 1


def _repeats_or_alternates(items: Any) -> bool:
    for op, argument in items:
        if op in _REPEATS or op is _constants.BRANCH:
            return True  # even x? inside (x?x)+ splits a run of x's exponentially many ways
        if op is _constants.SUBPATTERN and _repeats_or_alternates(argument[-1]):
            return True
        if op in _LOOKAROUNDS and _repeats_or_alternates(argument[1]):
            return True
        if op is _ATOMIC and _repeats_or_alternates(argument):
            return True
    return False
